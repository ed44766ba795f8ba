//! The Kubernetes source: kube-rs watchers on Services, EndpointSlices and
//! this agent's own Node.
//!
//! Objects are received as raw JSON and converted one by one into the
//! k8s-openapi types, so that one malformed object is skipped (with a
//! warning naming it and the field) instead of failing a whole list.
//!
//! The watchers retry with backoff when the API server is unreachable and
//! relist on `410 Gone` or a broken watch. A relist is sent as one
//! [`Update::Listed`] once it is complete, so nothing is removed while it
//! is in progress, and until the first complete list of both kinds the
//! store is not ready and the maps are left as they are.
//!
//! While the API server cannot be reached at all, the agent says why once
//! per outage (at warn level) and `/readyz` reports not ready; a probe of
//! `/version` notices the end of an outage even when the resumed watches
//! stay quiet. On a node without kube-proxy, the in-cluster address of the
//! API server (a ClusterIP) is not routed before lb runs, so the install
//! gives the API server's own address ([`KubeOptions::api_server`]).
//!
//! This node's Node decides whether it is eligible for load-balanced
//! traffic, as kube-proxy's `/healthz` has it: not while it is being
//! deleted or carries the cluster autoscaler's `ToBeDeletedByClusterAutoscaler`
//! taint.

use std::{borrow::Cow, path::PathBuf, sync::OnceLock, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    core::{ApiResource, DynamicResourceScope, Resource},
    runtime::{
        WatchStreamExt,
        utils::Backoff,
        watcher::{self, Event},
    },
};
use serde::{Deserialize, de::DeserializeOwned};
use tracing::{debug, info, warn};

use super::{Batch, Invalid, Kind, Object, ObjectKey, Sender, Update, lean, node::NodeFacts};
use crate::{metrics::Metrics, source::manifest::Sourced};

/// What the agent reads from the API, as RBAC names it: (API group,
/// resource, verbs). `deploy/`'s ClusterRole grants exactly this.
pub const WATCHED: [(&str, &str, &[&str]); 3] = [
    ("", "services", &["get", "list", "watch"]),
    ("discovery.k8s.io", "endpointslices", &["get", "list", "watch"]),
    ("", "nodes", &["get", "list", "watch"]),
];

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration (in-cluster, --kubeconfig or KUBECONFIG): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("creating the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("--k8s-api-server: {0}")]
    ApiServer(String),
}

/// The cluster autoscaler's taint on a node it is about to delete
/// (kube-proxy's `ToBeDeletedTaint`).
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
pub use super::node::ZONE_LABEL;

#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// A kubeconfig file; `None` infers (`KUBECONFIG`, then
    /// `~/.kube/config`, then the in-cluster configuration).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name, for the Node watch.
    pub node_name: Option<String>,
    /// Longest wait between retries when the API server fails.
    pub backoff_max: Duration,
    /// The API server's own address (`https://10.0.0.1:6443`), replacing
    /// the one of the kubeconfig or of the in-cluster configuration (whose
    /// service account token and CA are kept): a node without kube-proxy
    /// cannot reach the in-cluster address, a ClusterIP, before lb runs.
    pub api_server: Option<String>,
}

/// The API server the client talks to, for messages (set by [`client`]).
static SERVER: OnceLock<String> = OnceLock::new();

fn server() -> &'static str {
    SERVER.get().map_or("the API server", String::as_str)
}

/// The client, from `--kubeconfig` or `kube::Config::infer()`, sent to
/// `--k8s-api-server` if given.
pub async fn client(opts: &KubeOptions) -> Result<Client, KubeError> {
    let mut config = match &opts.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig { path: path.clone(), source })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig { path: path.clone(), source })?
        }
        None => infer(opts.api_server.is_some()).await?,
    };
    if let Some(url) = &opts.api_server {
        set_server(&mut config, url).map_err(KubeError::ApiServer)?;
    }
    let url = config.cluster_url.to_string();
    info!(server = %url, given = opts.api_server.is_some(), "Kubernetes API server");
    let _ = SERVER.set(url);
    Ok(Client::try_from(config)?)
}

/// `kube::Config::infer()`. When the API server's address is given, a pod
/// does not need the `KUBERNETES_SERVICE_*` variables either: its service
/// account (token, CA, namespace) is enough.
async fn infer(address_given: bool) -> Result<kube::Config, KubeError> {
    match kube::Config::infer().await {
        Ok(config) => Ok(config),
        Err(e) if address_given => kube::Config::incluster_dns().map_err(|_| KubeError::Infer(e)),
        Err(e) => Err(e.into()),
    }
}

/// Points `config` at `url`, which must be an http(s) URL with a host.
fn set_server(config: &mut kube::Config, url: &str) -> Result<(), String> {
    config.cluster_url = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    let uri = &config.cluster_url;
    // Anything in the authority besides the host must be a valid port.
    let port_ok = uri.port_u16().is_some() || uri.authority().map(|a| a.as_str()) == uri.host();
    match (uri.scheme_str(), uri.host()) {
        (Some("https" | "http"), Some(_)) if port_ok => Ok(()),
        _ => Err(format!("{url:?} is not an address like https://10.0.0.1:6443")),
    }
}

/// Checks `--k8s-api-server` (`https://HOST:PORT`; a bare `HOST:PORT`
/// means https) and returns it as a URL.
pub fn parse_api_server(s: &str) -> Result<String, String> {
    let s = s.trim();
    let url = if s.contains("://") { s.to_string() } else { format!("https://{s}") };
    set_server(&mut kube::Config::new(Default::default()), &url)?;
    Ok(url)
}

/// Starts the watchers, and the probe that sees the end of an outage;
/// they run until the receiver goes away (the probe until aborted).
pub fn spawn(client: Client, opts: &KubeOptions, tx: Sender, metrics: Metrics) -> Vec<tokio::task::JoinHandle<()>> {
    let api = Reachability { metrics, address_given: opts.api_server.is_some() };
    let mut tasks = vec![
        tokio::spawn(watch_kind(client.clone(), Kind::Service, opts.backoff_max, tx.clone(), api.clone())),
        tokio::spawn(watch_kind(client.clone(), Kind::EndpointSlice, opts.backoff_max, tx.clone(), api.clone())),
        tokio::spawn(probe_api(client.clone(), api.clone(), opts.backoff_max)),
    ];
    match &opts.node_name {
        Some(node) => tasks.push(tokio::spawn(watch_node(client, node.clone(), opts.backoff_max, api, tx))),
        None => warn!("no --node-name (or NODE_NAME): not watching this node's Node object"),
    }
    tasks
}

/// Whether the API server can be reached, shared by the watchers and the
/// probe: kept in [`Metrics`] (for `/readyz`), logged once per outage.
#[derive(Clone, Debug)]
struct Reachability {
    metrics: Metrics,
    /// Whether `--k8s-api-server` was given (otherwise an outage hints at it).
    address_given: bool,
}

impl Reachability {
    /// A request failed without an answer: the first failure of an outage
    /// is a warning, later ones are for debugging.
    fn failed(&self, what: &str, e: &dyn std::error::Error) {
        let why = error_chain(e);
        if !self.metrics.api_unreachable(&why) {
            debug!("{what}: cannot reach {}: {why}; retrying", server());
            return;
        }
        let hint = if self.address_given {
            ""
        } else {
            " (on a node without kube-proxy the in-cluster address, a ClusterIP, is not routed before lb \
             runs: give the API server's own address with --k8s-api-server or LB_K8S_API_SERVER)"
        };
        warn!(
            "cannot reach the API server at {} ({what}): {why}; retrying with backoff, serving what the pinned \
             maps hold, not ready until it answers{hint}",
            server()
        );
    }

    /// The API server answered: ends an outage, if there is one.
    fn reached(&self) {
        if let Some(outage) = self.metrics.api_reachable() {
            info!("the API server at {} answers again, after {}s", server(), outage.as_secs());
        }
    }
}

/// An error with its causes, `a: b: c`, skipping causes that the error's
/// own message already shows.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        cause = c.source();
    }
    text
}

/// Whether a watcher error means that the API server could not be reached
/// (no connection, or no answer) when listing or starting a watch, rather
/// than an answer refusing a request or a watch that broke once running.
fn is_unreachable(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) => {
            matches!(e, kube::Error::HyperError(_) | kube::Error::Service(_))
        }
        _ => false,
    }
}

/// The first error of a watcher's streak that is not an outage. A watch
/// that broke once running (as at every API server restart) is resumed at
/// once, and one that expired (`410 Gone`, a compacted watch cache) is
/// relisted: routine, worth a warning only if it leads to an outage. Any
/// other answer refusing a request (forbidden, server errors) is a warning.
fn log_watch_error(what: &str, e: &watcher::Error) {
    let why = error_chain(e);
    match e {
        watcher::Error::WatchFailed(_) => info!("{what}: {why}; resuming"),
        watcher::Error::WatchError(status) if status.code == 410 => info!("{what}: {why}; relisting"),
        _ => warn!("{what}: {why}; retrying with backoff, the maps keep their current state"),
    }
}

/// How often the probe checks for an outage while there is none.
const PROBE_IDLE: Duration = Duration::from_secs(1);
/// How long a probe waits for the API server's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// During an outage, asks the API server for its version (with backoff):
/// watches that resume without anything to report would not show that it
/// is back. Any answer, even a refusal, ends the outage.
async fn probe_api(client: Client, api: Reachability, backoff_max: Duration) {
    let mut retry = Retry::new(backoff_max);
    loop {
        if api.metrics.api_outage().is_none() {
            retry.reset();
            tokio::time::sleep(PROBE_IDLE).await;
            continue;
        }
        tokio::time::sleep(retry.next().unwrap_or(backoff_max)).await;
        match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(_) | Err(kube::Error::Api(_))) => api.reached(),
            Ok(Err(e)) => debug!("probing {}: {}", server(), error_chain(&e)),
            Err(_) => debug!("probing {}: no answer within {PROBE_TIMEOUT:?}", server()),
        }
    }
}

/// Why this Node should not get new load-balanced traffic, as kube-proxy's
/// `/healthz` decides (KEP-3836): it is being deleted, or the cluster
/// autoscaler is about to delete it. `None`: eligible.
pub fn node_ineligible(node: &Node) -> Option<String> {
    if node.metadata.deletion_timestamp.is_some() {
        return Some("the Node is being deleted (metadata.deletionTimestamp is set)".to_string());
    }
    let mut taints = node.spec.iter().flat_map(|s| s.taints.iter().flatten());
    taints.find(|t| t.key == TO_BE_DELETED_TAINT).map(|t| format!("the Node has the {} taint", t.key))
}

/// Records this node's eligibility, logging when it changes.
fn set_eligibility(metrics: &Metrics, node: &str, why: Option<String>) {
    match (metrics.set_node_ineligible(why.clone()), why) {
        (None, Some(why)) => {
            info!(node, "{why}: /healthz answers 503 (nodeEligible: false), so that load balancers drain this node")
        }
        (Some(_), None) => info!(node, "the Node is eligible again: /healthz answers 200"),
        _ => {}
    }
}

/// Any object as the API server sent it: the metadata lb needs to follow
/// the watch, and the raw JSON, converted later. Deserializing it only
/// fails on invalid JSON.
#[derive(Clone, Debug)]
pub struct RawObject {
    pub metadata: ObjectMeta,
    pub value: serde_json::Value,
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut value = serde_json::Value::deserialize(d)?;
        let meta = value.get("metadata");
        let field = |k: &str| meta.and_then(|m| m.get(k)).and_then(|v| v.as_str()).map(String::from);
        let metadata = ObjectMeta {
            name: field("name"),
            namespace: field("namespace"),
            resource_version: field("resourceVersion"),
            uid: field("uid"),
            ..ObjectMeta::default()
        };
        // Before the next object of a list page is read: a page of full
        // objects would otherwise hold every `managedFields` as JSON values.
        lean::trim_metadata(&mut value);
        Ok(RawObject { metadata, value })
    }
}

impl Resource for RawObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Converts a raw object into its k8s-openapi type, naming the failing
/// field. Fields unknown to k8s-openapi (newer API versions) are ignored.
pub fn convert<T: DeserializeOwned>(kind: Kind, raw: &RawObject) -> Result<T, Invalid> {
    let key = raw.metadata.name.as_ref().map(|_| ObjectKey::new(raw.metadata.namespace.as_deref(), raw.metadata.name.as_deref()));
    serde_path_to_error::deserialize::<_, T>(&raw.value).map_err(|e| {
        let name = key.as_ref().map(ToString::to_string).unwrap_or_else(|| "<unnamed>".into());
        Invalid { kind, key, problem: format!("{kind} {name}: invalid field `{}`: {}; object skipped", e.path(), e.inner()) }
    })
}

fn to_object(kind: Kind, mut raw: RawObject) -> Result<Object, Invalid> {
    lean::trim(kind, &mut raw.value);
    let raw = &raw;
    let origin = String::new();
    match kind {
        Kind::Service => convert::<Service>(kind, raw).map(|obj| Object::Service(Box::new(Sourced { origin, obj }))),
        Kind::EndpointSlice => convert::<EndpointSlice>(kind, raw).map(|obj| Object::EndpointSlice(Sourced { origin, obj: obj.into() })),
    }
}

/// Exponential backoff from 200 ms to `max`, reset after a success, with
/// jitter: each wait is drawn from its upper half, so that the agents of
/// every node do not retry against a recovering API server in step.
struct Retry {
    next: Duration,
    max: Duration,
    /// Random bits for the jitter (the std hasher's random keys).
    seed: std::collections::hash_map::RandomState,
    draws: u64,
}

/// `d` with equal jitter: `d/2 + (r mod d/2)` for a random `r`, so in
/// `[d/2, d)` (`d` when it is too short to jitter).
fn jittered(d: Duration, r: u64) -> Duration {
    let half = d.as_nanos() as u64 / 2;
    if half == 0 {
        return d;
    }
    Duration::from_nanos(half + r % half)
}

const RETRY_MIN: Duration = Duration::from_millis(200);

impl Retry {
    fn new(max: Duration) -> Retry {
        Retry { next: RETRY_MIN.min(max), max, seed: Default::default(), draws: 0 }
    }

    fn random(&mut self) -> u64 {
        use std::hash::BuildHasher;
        self.draws += 1;
        self.seed.hash_one(self.draws)
    }
}

impl Iterator for Retry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let r = self.random();
        Some(jittered(d, r))
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.next = RETRY_MIN.min(self.max);
    }
}

/// `config` with its lists served from the API server's watch cache
/// (`resourceVersion=0`), as client-go's informers ask for theirs, so that
/// thousands of agents relisting after an outage do not all read etcd.
/// Unpaged: kube-rs leaves `resourceVersion=0` out of a paged list (the
/// cache serves such a list whole anyway).
fn from_cache(config: watcher::Config) -> watcher::Config {
    let mut config = config.any_semantic();
    config.page_size = None;
    config
}

fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Service => ApiResource::erase::<Service>(&()),
        Kind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
    }
}

async fn watch_kind(client: Client, kind: Kind, backoff_max: Duration, tx: Sender, api: Reachability) {
    let resources: Api<RawObject> = Api::all_with(client, &api_resource(kind));
    // kube-proxy's selector: the API server leaves out other proxies' and
    // headless Services (and their slices).
    let config = from_cache(watcher::Config::default().labels(lean::WATCH_LABEL_SELECTOR));
    let mut stream = watcher::watcher(resources, config).backoff(Retry::new(backoff_max)).boxed();
    // Objects of a list in progress; sent as one update when complete.
    let mut listing: Option<(Vec<Object>, Vec<Invalid>)> = None;
    let mut failing = false;
    while let Some(event) = stream.next().await {
        if event.is_ok() {
            api.reached();
        }
        let update = match event {
            Ok(Event::Init) => {
                debug!("listing {kind}s");
                listing = Some((Vec::new(), Vec::new()));
                None
            }
            Ok(Event::InitApply(raw)) => {
                let (objects, invalid) = listing.get_or_insert_with(Default::default);
                match to_object(kind, raw) {
                    Ok(obj) => objects.push(obj),
                    Err(inv) => {
                        warn!("{}", inv.problem);
                        invalid.push(inv);
                    }
                }
                None
            }
            Ok(Event::InitDone) => {
                let (objects, invalid) = listing.take().unwrap_or_default();
                info!(count = objects.len(), skipped = invalid.len(), "listed {kind}s");
                Some(Update::Listed { kind, objects, invalid })
            }
            Ok(Event::Apply(raw)) => Some(match to_object(kind, raw) {
                Ok(obj) => Update::Applied(obj),
                Err(inv) => {
                    warn!("{}", inv.problem);
                    Update::Invalid(inv)
                }
            }),
            Ok(Event::Delete(raw)) => {
                Some(Update::Deleted { kind, key: ObjectKey::new(raw.metadata.namespace.as_deref(), raw.metadata.name.as_deref()) })
            }
            Err(e) => {
                api.metrics.api_error(kind);
                // A watch that breaks, or expires (410 Gone), is restarted
                // by the watcher: relisted if needed, maps untouched.
                if is_unreachable(&e) {
                    api.failed(&format!("watching {kind}s"), &e);
                } else if failing {
                    debug!("watching {kind}s: {}; retrying", error_chain(&e));
                } else {
                    failing = true;
                    log_watch_error(&format!("watching {kind}s"), &e);
                }
                None
            }
        };
        if let Some(update) = update {
            if failing {
                info!("watching {kind}s again");
                failing = false;
            }
            if tx.send(Batch::now(vec![update])).await.is_err() {
                return;
            }
        }
    }
}

/// Follows this agent's Node object: whether it is eligible for
/// load-balanced traffic (for `/healthz`). Its labels (zone) and addresses
/// are for the topology and NodePort work.
async fn watch_node(client: Client, node: String, backoff_max: Duration, api: Reachability, tx: Sender) {
    let nodes: Api<RawObject> = Api::all_with(client, &ApiResource::erase::<Node>(&()));
    let config = from_cache(watcher::Config::default().fields(&format!("metadata.name={node}")));
    let mut stream = watcher::watcher(nodes, config).backoff(Retry::new(backoff_max)).boxed();
    let metrics = &api.metrics;
    let mut failing = false;
    // Whether the Node exists, and whether the list in progress has it.
    let (mut known, mut listed) = (false, false);
    // The zone and InternalIPs last sent to the store.
    let mut sent: Option<(Option<String>, Vec<std::net::IpAddr>)> = None;
    while let Some(event) = stream.next().await {
        if event.is_ok() {
            api.reached();
        }
        match event {
            Ok(Event::Apply(raw) | Event::InitApply(raw)) => {
                failing = false;
                (known, listed) = (true, true);
                match serde_path_to_error::deserialize::<_, Node>(&raw.value) {
                    Ok(n) => {
                        let NodeFacts { zone, internal_ips } = NodeFacts::of(&n);
                        metrics.set_node_seen(true);
                        set_eligibility(metrics, &node, node_ineligible(&n));
                        debug!(node, ?zone, ?internal_ips, "node updated");
                        let now = (zone, internal_ips);
                        if sent.as_ref() != Some(&now) {
                            sent = Some(now.clone());
                            let (zone, internal_ips) = now;
                            if tx.send(Batch::now(vec![Update::Node { zone, internal_ips }])).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => warn!("Node {node}: invalid field `{}`: {}; ignored", e.path(), e.inner()),
                }
            }
            Ok(Event::Delete(_)) => {
                known = false;
                node_deleted(metrics, &node);
            }
            Ok(Event::Init) => listed = false,
            Ok(Event::InitDone) => {
                // A relist without the Node: it was deleted meanwhile.
                if known && !listed {
                    known = false;
                    node_deleted(metrics, &node);
                }
            }
            Err(e) => {
                metrics.api_error_node();
                if is_unreachable(&e) {
                    api.failed("watching this Node", &e);
                } else if !failing {
                    failing = true;
                    log_watch_error(&format!("watching Node {node}"), &e);
                }
            }
        }
    }
}

/// This node's Node is gone: it takes no load-balanced traffic any more.
fn node_deleted(metrics: &Metrics, node: &str) {
    metrics.set_node_seen(false);
    warn!("Node {node} was deleted");
    set_eligibility(metrics, node, Some("the Node was deleted".to_string()));
}

#[cfg(test)]
mod node_tests {
    use k8s_openapi::{
        api::core::v1::{NodeSpec, Taint},
        apimachinery::pkg::apis::meta::v1::Time,
    };

    use super::*;

    fn node(deleting: bool, taints: &[&str]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n".into()),
                deletion_timestamp: deleting.then(|| Time(Default::default())),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints.iter().map(|k| Taint { key: k.to_string(), effect: "NoSchedule".into(), ..Taint::default() }).collect(),
                ),
                ..NodeSpec::default()
            }),
            ..Node::default()
        }
    }

    #[test]
    fn eligibility_follows_kube_proxy() {
        assert_eq!(node_ineligible(&node(false, &[])), None);
        assert_eq!(node_ineligible(&node(false, &["node.kubernetes.io/unschedulable"])), None);
        assert!(node_ineligible(&node(true, &[])).unwrap().contains("deletionTimestamp"));
        let why = node_ineligible(&node(false, &["a", TO_BE_DELETED_TAINT])).unwrap();
        assert!(why.contains(TO_BE_DELETED_TAINT), "{why}");
        assert_eq!(node_ineligible(&Node::default()), None);
    }

    #[test]
    fn retries_back_off_with_jitter() {
        assert_eq!(jittered(Duration::from_millis(200), 0), Duration::from_millis(100));
        assert_eq!(jittered(Duration::from_millis(200), 99_999_999), Duration::from_nanos(199_999_999));
        assert_eq!(jittered(Duration::ZERO, 5), Duration::ZERO);
        let waits: Vec<Duration> = Retry::new(Duration::from_secs(2)).take(8).collect();
        let bases = [200, 400, 800, 1600, 2000, 2000, 2000, 2000].map(Duration::from_millis);
        for (w, b) in waits.iter().zip(bases) {
            assert!(*w >= b / 2 && *w < b, "{w:?} not in [{:?}, {b:?})", b / 2);
        }
        // Two agents do not wait the same.
        let other: Vec<Duration> = Retry::new(Duration::from_secs(2)).take(8).collect();
        assert_ne!(waits, other);
    }

    #[test]
    fn api_server_addresses() {
        assert_eq!(parse_api_server("https://10.0.0.1:6443").as_deref(), Ok("https://10.0.0.1:6443"));
        assert_eq!(parse_api_server("10.0.0.1:6443").as_deref(), Ok("https://10.0.0.1:6443"));
        assert_eq!(parse_api_server(" api.example:443 ").as_deref(), Ok("https://api.example:443"));
        assert!(parse_api_server("http://[fd00::1]:6443").is_ok());
        for bad in ["", "ftp://10.0.0.1", "https://", "https://10.0.0.1:port"] {
            assert!(parse_api_server(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_chains_skip_repeated_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Repeats(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Hides(#[source] std::io::Error);
        let io = || std::io::Error::other("refused");
        assert_eq!(error_chain(&Repeats(io())), "outer: refused");
        assert_eq!(error_chain(&Hides(io())), "outer: refused");
    }
}
