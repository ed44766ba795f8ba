//! Where Services and EndpointSlices come from, and the store they feed.
//!
//! A source ([`dir`] or [`kube`]) sends [`Batch`]es of [`Update`]s over a
//! channel; the run loop applies them to one [`Store`], which it
//! translates and reconciles. Both sources feed the same translation and
//! the same reconciler. [`manifest`] parses YAML documents (the directory
//! source and the tests), [`slice`] holds an EndpointSlice as translation
//! reads it.
//!
//! The store only becomes [`Store::ready`] after a complete list of both
//! Services and EndpointSlices: before that, translating it would remove
//! frontends that the pinned maps still serve.

pub mod dir;
pub mod dir_watch;
pub mod kube;
pub mod lean;
pub mod manifest;
pub mod node;
pub mod shared;
pub mod slice;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    time::{Instant, SystemTime},
};

use k8s_openapi::api::core::v1::Service;
use tracing::{info, warn};

use self::{manifest::Sourced, slice::Slice};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
        })
    }
}

/// An object's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: Option<&str>, name: Option<&str>) -> ObjectKey {
        ObjectKey { namespace: namespace.unwrap_or("default").to_string(), name: name.unwrap_or("").to_string() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug)]
pub enum Object {
    /// Boxed: a k8s-openapi Service is about 900 bytes, nearly all of it
    /// empty `Option`s. Unboxed, the store's map kept that much in each of
    /// its nodes' empty slots, and a list's `Vec<Object>` (grown by
    /// doubling) held every object at that size too.
    Service(Box<Sourced<Service>>),
    EndpointSlice(Sourced<Slice>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
        }
    }

    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Service(s) => ObjectKey::new(s.obj.metadata.namespace.as_deref(), s.obj.metadata.name.as_deref()),
            Object::EndpointSlice(s) => ObjectKey::new(s.obj.namespace.as_deref(), s.obj.name.as_deref()),
        }
    }

    fn origin(&self) -> &str {
        match self {
            Object::Service(s) => &s.origin,
            Object::EndpointSlice(s) => &s.origin,
        }
    }
}

/// An object that could not be read, with why (naming it and the field).
#[derive(Clone, Debug)]
pub struct Invalid {
    pub kind: Kind,
    /// `None` when the object's name could not be read either.
    pub key: Option<ObjectKey>,
    pub problem: String,
}

// One Update per watch event, moved through a channel once.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Update {
    /// A complete list of one kind (a first list or a relist): replaces
    /// what the store holds of that kind.
    Listed { kind: Kind, objects: Vec<Object>, invalid: Vec<Invalid> },
    /// An object was added or changed.
    Applied(Object),
    /// An object was deleted.
    Deleted { kind: Kind, key: ObjectKey },
    /// An added or changed object could not be read; the store keeps its
    /// last valid version, if any.
    Invalid(Invalid),
    /// This node's Node changed: its `topology.kubernetes.io/zone` label
    /// and its addresses of both families (`InternalIP`, else
    /// `ExternalIP`, per family).
    Node { zone: Option<String>, internal_ips: Vec<std::net::IpAddr> },
    /// The problems of one kind that name no object (a directory's
    /// documents that could not be read, duplicates), replacing those the
    /// last list or `Problems` gave.
    Problems { kind: Kind, problems: Vec<String> },
}

/// Updates a source saw together, with when it saw the first of them.
#[derive(Clone, Debug)]
pub struct Batch {
    pub seen: Instant,
    pub updates: Vec<Update>,
}

impl Batch {
    pub fn now(updates: Vec<Update>) -> Batch {
        Batch { seen: Instant::now(), updates }
    }
}

pub type Sender = tokio::sync::mpsc::Sender<Batch>;

/// The objects the agent currently knows.
#[derive(Debug, Default)]
pub struct Store {
    services: BTreeMap<ObjectKey, Box<Sourced<Service>>>,
    slices: BTreeMap<ObjectKey, Sourced<Slice>>,
    /// Objects currently skipped because they could not be read.
    invalid: BTreeMap<(Kind, ObjectKey), String>,
    /// Problems of the last list of a kind that name no object.
    unnamed_problems: BTreeMap<Kind, Vec<String>>,
    listed: BTreeSet<Kind>,
    /// A generation per Service (namespace, name), bumped whenever the
    /// Service or one of its slices changes: translation redoes only the
    /// Services whose generation moved.
    generations: foldhash::HashMap<ObjectKey, u64>,
    next_generation: u64,
    /// Services touched since the last [`Store::take_touched`].
    touched: Touched,
    /// Slices by the Service they name.
    /// (A Vec: most Services have one or two slices, and a BTreeSet's
    /// first node alone is about 500 bytes.)
    slices_of: foldhash::HashMap<ObjectKey, Vec<ObjectKey>>,
    /// This node's zone label (topology hints).
    node_zone: Option<String>,
    /// This node's `InternalIP` addresses (`--nodeport-addresses primary`).
    node_internal_ips: Vec<std::net::IpAddr>,
    /// The trigger times of the slice changes not yet synced, by the
    /// Service they name (network programming latency).
    trigger_times: BTreeMap<ObjectKey, Vec<SystemTime>>,
}

/// Services whose generation moved since the last look.
#[derive(Debug)]
pub enum Touched {
    Some(BTreeSet<ObjectKey>),
    /// Too many to list (a first list, a relist): look at every Service.
    All,
}

impl Default for Touched {
    fn default() -> Self {
        Touched::Some(BTreeSet::new())
    }
}

/// Beyond this many touched Services the store stops listing them.
const TOUCHED_MAX: usize = 1024;

/// The key of the Service a slice belongs to.
fn slice_service(s: &Slice) -> Option<ObjectKey> {
    Some(ObjectKey::new(s.namespace.as_deref(), Some(s.service.as_deref()?)))
}

impl Store {
    /// Whether both kinds have been listed completely at least once.
    pub fn ready(&self) -> bool {
        self.listed.contains(&Kind::Service) && self.listed.contains(&Kind::EndpointSlice)
    }

    pub fn services(&self) -> impl Iterator<Item = &Sourced<Service>> {
        self.services.values().map(|s| &**s)
    }

    pub fn slices(&self) -> impl Iterator<Item = &Sourced<Slice>> {
        self.slices.values()
    }

    /// The Services, keyed by (namespace, name).
    pub fn services_by_key(&self) -> impl Iterator<Item = (&ObjectKey, &Sourced<Service>)> {
        self.services.iter().map(|(k, s)| (k, &**s))
    }

    pub fn service(&self, key: &ObjectKey) -> Option<&Sourced<Service>> {
        self.services.get(key).map(|s| &**s)
    }

    /// Whether the Service `key` is in the store.
    pub fn has_service(&self, key: &ObjectKey) -> bool {
        self.services.contains_key(key)
    }

    /// The slices that name the Service `key`.
    pub fn slices_of(&self, key: &ObjectKey) -> impl Iterator<Item = &Sourced<Slice>> {
        self.slices_of.get(key).into_iter().flatten().filter_map(|k| self.slices.get(k))
    }

    /// The generation of the Service `key` and its slices: it changes
    /// whenever any of them does.
    pub fn generation(&self, key: &ObjectKey) -> u64 {
        self.generations.get(key).copied().unwrap_or(0)
    }

    /// The Services (keys) whose generation moved since the last call, or
    /// that were removed.
    pub fn take_touched(&mut self) -> Touched {
        std::mem::take(&mut self.touched)
    }

    fn touch(&mut self, service: ObjectKey) {
        self.next_generation += 1;
        if let Touched::Some(set) = &mut self.touched {
            if set.len() >= TOUCHED_MAX {
                self.touched = Touched::All;
            } else {
                set.insert(service.clone());
            }
        }
        // Nothing left of it: forget it (absent means generation 0; a
        // Service created again is touched again).
        if !self.services.contains_key(&service) && !self.slices_of.contains_key(&service) {
            self.generations.remove(&service);
            return;
        }
        self.generations.insert(service, self.next_generation);
    }

    fn touch_service(&mut self, key: &ObjectKey) {
        self.touch(key.clone());
    }

    /// Adds or removes slice `key` under the Service `svc` it names. Each
    /// Service's slices are kept in name order, the order a full
    /// translation reads them in: the first slice that lists an endpoint
    /// gives its node and zone, so arrival order must not decide.
    fn index_slice(&mut self, key: &ObjectKey, svc: Option<ObjectKey>, add: bool) {
        let Some(svc) = svc else { return };
        if add {
            let list = self.slices_of.entry(svc.clone()).or_default();
            if let Err(at) = list.binary_search(key) {
                list.insert(at, key.clone());
            }
        } else if let Some(set) = self.slices_of.get_mut(&svc) {
            set.retain(|k| k != key);
            if set.is_empty() {
                self.slices_of.remove(&svc);
            }
        }
        self.touch(svc);
    }

    /// This node's `topology.kubernetes.io/zone` label, once its Node was
    /// seen.
    pub fn node_zone(&self) -> Option<&str> {
        self.node_zone.as_deref()
    }

    /// This node's addresses (see [`Update::Node`]), once its Node was
    /// seen.
    pub fn node_internal_ips(&self) -> &[std::net::IpAddr] {
        &self.node_internal_ips
    }

    /// The trigger times of the slice changes since the last call (a slice
    /// added or changed with a readable trigger time, as kube-proxy counts
    /// them): the next sync writes these changes.
    pub fn take_trigger_times(&mut self) -> Vec<SystemTime> {
        std::mem::take(&mut self.trigger_times).into_values().flatten().collect()
    }

    /// Notes the trigger time of a slice that was added or changed.
    fn note_trigger_time(&mut self, trigger_time: Option<SystemTime>, service: Option<ObjectKey>) {
        if let (Some(t), Some(svc)) = (trigger_time, service) {
            self.trigger_times.entry(svc).or_default().push(t);
        }
    }

    /// Objects (or documents) skipped because they could not be read.
    pub fn skipped(&self) -> usize {
        self.invalid.len() + self.unnamed_problems.values().map(Vec::len).sum::<usize>()
    }

    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Listed { kind, objects, invalid } => self.listed(kind, objects, invalid),
            Update::Applied(obj) => {
                self.invalid.remove(&(obj.kind(), obj.key()));
                self.insert(obj);
            }
            Update::Deleted { kind, key } => {
                self.invalid.remove(&(kind, key.clone()));
                match kind {
                    Kind::Service => {
                        if self.services.remove(&key).is_some() {
                            self.touch_service(&key);
                        }
                    }
                    Kind::EndpointSlice => {
                        if let Some(old) = self.slices.remove(&key) {
                            // As kube-proxy: a deleted slice's trigger time
                            // is that of its last update, not of the
                            // deletion; the Service's pending ones go too.
                            if let Some(svc) = slice_service(&old.obj) {
                                self.trigger_times.remove(&svc);
                            }
                            self.index_slice(&key, slice_service(&old.obj), false);
                        }
                    }
                }
            }
            Update::Invalid(inv) => self.record_invalid(inv),
            Update::Node { zone, internal_ips } => {
                self.node_zone = zone;
                self.node_internal_ips = internal_ips;
            }
            Update::Problems { kind, problems } => {
                if problems.is_empty() {
                    self.unnamed_problems.remove(&kind);
                } else {
                    self.unnamed_problems.insert(kind, problems);
                }
            }
        }
    }

    fn listed(&mut self, kind: Kind, objects: Vec<Object>, invalid: Vec<Invalid>) {
        let mut previous_services = BTreeMap::new();
        let mut previous_slices = BTreeMap::new();
        match kind {
            Kind::Service => previous_services = std::mem::take(&mut self.services),
            Kind::EndpointSlice => previous_slices = std::mem::take(&mut self.slices),
        }
        self.invalid.retain(|(k, _), _| *k != kind);
        self.unnamed_problems.remove(&kind);
        for obj in objects {
            if obj.kind() != kind {
                warn!("internal: a {} in a list of {kind}s, ignored", obj.kind());
                continue;
            }
            let key = obj.key();
            let duplicate = match kind {
                Kind::Service => self.services.get(&key).map(|s| s.origin.clone()),
                Kind::EndpointSlice => self.slices.get(&key).map(|s| s.origin.clone()),
            };
            if let Some(first) = duplicate {
                let msg = format!("{}: {kind} {key} is also defined in {first}; this copy is skipped", obj.origin());
                warn!("{msg}");
                self.unnamed_problems.entry(kind).or_default().push(msg);
                continue;
            }
            self.insert_listed(obj);
        }
        for inv in invalid {
            // An object that turned invalid keeps its last valid version.
            if let Some(key) = &inv.key {
                match kind {
                    Kind::Service => {
                        if let Some(old) = previous_services.remove(key) {
                            self.services.entry(key.clone()).or_insert(old);
                        }
                    }
                    Kind::EndpointSlice => {
                        if let Some(old) = previous_slices.remove(key) {
                            self.slices.entry(key.clone()).or_insert(old);
                        }
                    }
                }
            }
            self.record_invalid(inv);
        }
        self.listed.insert(kind);
        // Generations move only for what the list changed.
        match kind {
            Kind::Service => {
                let changed: Vec<ObjectKey> = changed_keys(&previous_services, &self.services);
                for key in changed {
                    self.touch_service(&key);
                }
            }
            Kind::EndpointSlice => {
                for key in changed_keys(&previous_slices, &self.slices) {
                    let old = previous_slices.get(&key).map(|s| slice_service(&s.obj));
                    let new = self.slices.get(&key).map(|s| slice_service(&s.obj));
                    if let Some(svc) = &new {
                        self.note_trigger_time(self.slices.get(&key).and_then(|s| s.obj.trigger_time), svc.clone());
                    }
                    if let Some(svc) = old {
                        self.index_slice(&key, svc, false);
                    }
                    if let Some(svc) = new {
                        self.index_slice(&key, svc, true);
                    }
                }
            }
        }
    }

    /// Inserts without touching generations (a list compares afterwards).
    fn insert_listed(&mut self, obj: Object) {
        let key = obj.key();
        match obj {
            Object::Service(s) => {
                self.services.insert(key, s);
            }
            Object::EndpointSlice(s) => {
                self.slices.insert(key, s);
            }
        }
    }

    fn insert(&mut self, obj: Object) {
        let key = obj.key();
        match obj {
            Object::Service(s) => {
                if self.services.get(&key) != Some(&s) {
                    self.services.insert(key.clone(), s);
                    self.touch_service(&key);
                }
            }
            Object::EndpointSlice(s) => {
                if self.slices.get(&key) == Some(&s) {
                    return;
                }
                let svc = slice_service(&s.obj);
                self.note_trigger_time(s.obj.trigger_time, svc.clone());
                if let Some(old) = self.slices.insert(key.clone(), s) {
                    self.index_slice(&key, slice_service(&old.obj), false);
                }
                self.index_slice(&key, svc, true);
            }
        }
    }

    fn record_invalid(&mut self, inv: Invalid) {
        let kept = inv.key.as_ref().is_some_and(|key| match inv.kind {
            Kind::Service => self.services.contains_key(key),
            Kind::EndpointSlice => self.slices.contains_key(key),
        });
        // The source has logged the problem already.
        let msg = if kept {
            let key = inv.key.as_ref().map(ToString::to_string).unwrap_or_default();
            info!("{} {key}: its last valid version stays in use", inv.kind);
            format!("{}; its last valid version stays in use", inv.problem)
        } else {
            inv.problem
        };
        match inv.key {
            Some(key) => {
                self.invalid.insert((inv.kind, key), msg);
            }
            None => self.unnamed_problems.entry(inv.kind).or_default().push(msg),
        }
    }
}

/// Keys whose value differs between two versions of a map (added,
/// removed or changed).
fn changed_keys<T: PartialEq>(old: &BTreeMap<ObjectKey, T>, new: &BTreeMap<ObjectKey, T>) -> Vec<ObjectKey> {
    let mut out: Vec<ObjectKey> = new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
    out.extend(old.keys().filter(|k| !new.contains_key(*k)).cloned());
    out
}

#[cfg(test)]
mod tests;
