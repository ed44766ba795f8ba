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

use std::{borrow::Cow, path::PathBuf, time::Duration};

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

use super::{Batch, Invalid, Kind, Object, ObjectKey, Sender, Update};
use crate::{manifest::Sourced, metrics::Metrics};

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
}

#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// A kubeconfig file; `None` infers (in-cluster, then `KUBECONFIG`,
    /// then `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name, for the Node watch.
    pub node_name: Option<String>,
    /// Longest wait between retries when the API server fails.
    pub backoff_max: Duration,
}

/// The client, from `--kubeconfig` or `kube::Config::infer()`.
pub async fn client(opts: &KubeOptions) -> Result<Client, KubeError> {
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|source| KubeError::Kubeconfig { path: path.clone(), source })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig { path: path.clone(), source })?
        }
        None => kube::Config::infer().await?,
    };
    info!(server = %config.cluster_url, "Kubernetes API server");
    Ok(Client::try_from(config)?)
}

/// Starts the watchers; they run until the receiver goes away.
pub fn spawn(client: Client, opts: &KubeOptions, tx: Sender, metrics: Metrics) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(watch_kind::<Service>(
            client.clone(),
            Kind::Service,
            opts.backoff_max,
            tx.clone(),
            metrics.clone(),
        )),
        tokio::spawn(watch_kind::<EndpointSlice>(
            client.clone(),
            Kind::EndpointSlice,
            opts.backoff_max,
            tx,
            metrics.clone(),
        )),
    ];
    match &opts.node_name {
        Some(node) => tasks.push(tokio::spawn(watch_node(client, node.clone(), opts.backoff_max, metrics))),
        None => warn!("no --node-name (or NODE_NAME): not watching this node's Node object"),
    }
    tasks
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
        let value = serde_json::Value::deserialize(d)?;
        let meta = value.get("metadata");
        let field = |k: &str| meta.and_then(|m| m.get(k)).and_then(|v| v.as_str()).map(String::from);
        let metadata = ObjectMeta {
            name: field("name"),
            namespace: field("namespace"),
            resource_version: field("resourceVersion"),
            uid: field("uid"),
            ..ObjectMeta::default()
        };
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
    let key = raw
        .metadata
        .name
        .as_ref()
        .map(|_| ObjectKey::new(raw.metadata.namespace.as_deref(), raw.metadata.name.as_deref()));
    serde_path_to_error::deserialize::<_, T>(&raw.value).map_err(|e| {
        let name = key.as_ref().map(ToString::to_string).unwrap_or_else(|| "<unnamed>".into());
        Invalid {
            kind,
            key,
            problem: format!(
                "{kind} {name}: invalid field `{}`: {}; object skipped",
                e.path(),
                e.inner()
            ),
        }
    })
}

fn to_object(kind: Kind, raw: &RawObject) -> Result<Object, Invalid> {
    let origin = String::new();
    match kind {
        Kind::Service => convert::<Service>(kind, raw).map(|obj| Object::Service(Sourced { origin, obj })),
        Kind::EndpointSlice => {
            convert::<EndpointSlice>(kind, raw).map(|obj| Object::EndpointSlice(Sourced { origin, obj: obj.into() }))
        }
    }
}

/// Exponential backoff from 200 ms to `max`, reset after a success.
struct Retry {
    next: Duration,
    max: Duration,
}

const RETRY_MIN: Duration = Duration::from_millis(200);

impl Retry {
    fn new(max: Duration) -> Retry {
        Retry { next: RETRY_MIN.min(max), max }
    }
}

impl Iterator for Retry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(d)
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.next = RETRY_MIN.min(self.max);
    }
}

fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Service => ApiResource::erase::<Service>(&()),
        Kind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
    }
}

async fn watch_kind<T>(client: Client, kind: Kind, backoff_max: Duration, tx: Sender, metrics: Metrics) {
    let api: Api<RawObject> = Api::all_with(client, &api_resource(kind));
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .backoff(Retry::new(backoff_max))
        .boxed();
    // Objects of a list in progress; sent as one update when complete.
    let mut listing: Option<(Vec<Object>, Vec<Invalid>)> = None;
    let mut failing = false;
    while let Some(event) = stream.next().await {
        let update = match event {
            Ok(Event::Init) => {
                debug!("listing {kind}s");
                listing = Some((Vec::new(), Vec::new()));
                None
            }
            Ok(Event::InitApply(raw)) => {
                let (objects, invalid) = listing.get_or_insert_with(Default::default);
                match to_object(kind, &raw) {
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
            Ok(Event::Apply(raw)) => Some(match to_object(kind, &raw) {
                Ok(obj) => Update::Applied(obj),
                Err(inv) => {
                    warn!("{}", inv.problem);
                    Update::Invalid(inv)
                }
            }),
            Ok(Event::Delete(raw)) => Some(Update::Deleted {
                kind,
                key: ObjectKey::new(raw.metadata.namespace.as_deref(), raw.metadata.name.as_deref()),
            }),
            Err(e) => {
                metrics.api_error(kind);
                // A watch that breaks, or expires (410 Gone), is restarted
                // by the watcher: relisted if needed, maps untouched.
                if failing {
                    debug!("watching {kind}s: {e}; retrying");
                } else {
                    warn!("watching {kind}s: {e}; retrying with backoff, the maps keep their current state");
                }
                failing = true;
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

/// Follows this agent's Node object. Only logged for now: its labels
/// (zone) and addresses are for the topology and NodePort work.
async fn watch_node(client: Client, node: String, backoff_max: Duration, metrics: Metrics) {
    let api: Api<RawObject> = Api::all_with(client, &ApiResource::erase::<Node>(&()));
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut stream = watcher::watcher(api, config).backoff(Retry::new(backoff_max)).boxed();
    let mut failing = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(raw) | Event::InitApply(raw)) => {
                failing = false;
                match serde_path_to_error::deserialize::<_, Node>(&raw.value) {
                    Ok(n) => {
                        let zone = n
                            .metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get("topology.kubernetes.io/zone"))
                            .cloned();
                        metrics.set_node_seen(true);
                        debug!(node, ?zone, "node updated");
                    }
                    Err(e) => warn!("Node {node}: invalid field `{}`: {}; ignored", e.path(), e.inner()),
                }
            }
            Ok(Event::Delete(_)) => {
                metrics.set_node_seen(false);
                warn!("Node {node} was deleted");
            }
            Ok(Event::Init | Event::InitDone) => {}
            Err(e) => {
                metrics.api_error_node();
                if !failing {
                    warn!("watching Node {node}: {e}; retrying with backoff");
                }
                failing = true;
            }
        }
    }
}
