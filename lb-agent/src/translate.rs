//! Kubernetes Services and EndpointSlices -> the desired datapath state,
//! with kube-proxy's semantics.
//!
//! - Every ClusterIP x every port is a frontend, of the ClusterIP's family
//!   ([`Translation::desired`] for IPv4, [`Translation::desired6`] for
//!   IPv6; `spec.clusterIPs` holds one per family of a dual-stack
//!   Service), with the endpoints of that family's EndpointSlices
//!   (`addressType`); headless and
//!   ExternalName Services, and Services labelled
//!   `service.kubernetes.io/service-proxy-name`, are not ours.
//! - The backend port comes from the EndpointSlice port whose name matches
//!   the ServicePort's name (the EndpointSlice controller already resolved a
//!   named `targetPort`), never from `targetPort` itself.
//! - Only ready endpoints take new connections; when none is ready, serving
//!   and terminating ones do (KEP-1669). Terminating endpoints are carried
//!   either way so that established flows to them survive.
//! - Slices of one Service are merged and endpoints deduplicated.
//! - An invalid field skips what it belongs to, with a warning naming the
//!   object and the field; everything else is applied.
//! - `sessionAffinity`, the traffic policies and the backend selection
//!   become `svc_flags` on the frontends; NodePorts, external IPs,
//!   LoadBalancer ingress IPs, source ranges, the health check NodePort
//!   and the dual-stack fields are validated and carried in
//!   [`Translation::services`], from which [`crate::northsouth::plan`]
//!   makes this node's NodePort, external IP and LoadBalancer frontends.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use lb_common::svc_flags;
use tracing::{debug, warn};

use crate::{
    model::{
        Backend, BackendAddr, BackendSelection, Cidr, Desired, Frontend, FrontendAddr, IpFamily, PortModel, Protocol, ServiceModel,
        ServiceRef, ServiceType, TrafficPolicy,
    },
    source::manifest::Sourced,
    source::{ObjectKey, Store, Touched},
};

pub use crate::source::slice::SERVICE_NAME_LABEL;
use crate::source::slice::Slice;
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Per-Service backend selection: `random` or `maglev`.
pub const BACKEND_SELECTION_ANNOTATION: &str = "lb.dev/backend-selection";
/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// The API server's upper bound for the affinity timeout (one day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// Agent-wide choices that a Service can override.
#[derive(Clone, Debug, Default)]
pub struct TranslateOptions {
    /// Backend selection of Services without the
    /// [`BACKEND_SELECTION_ANNOTATION`] (or with an invalid one).
    pub default_selection: BackendSelection,
}

#[derive(Debug, Default)]
pub struct Translation {
    /// The IPv4 frontends.
    pub desired: Desired,
    /// The IPv6 frontends.
    pub desired6: Desired<Ipv6Addr>,
    /// Every Service lb handles, with what its frontends do not carry.
    pub services: BTreeMap<ServiceRef, ServiceModel>,
    /// Warnings about skipped objects or fields, deduplicated.
    pub problems: BTreeSet<String>,
}

type SlicesByService<'a> = BTreeMap<(String, String), Vec<&'a Sourced<Slice>>>;

pub fn translate<'a>(
    services: impl IntoIterator<Item = &'a Sourced<Service>>,
    slices: impl IntoIterator<Item = &'a Sourced<Slice>>,
    opts: &TranslateOptions,
) -> Translation {
    let mut out = Translation::default();
    let mut by_service: SlicesByService<'a> = BTreeMap::new();
    for slice in slices {
        let s = &slice.obj;
        let ns = s.namespace.clone().unwrap_or_else(|| "default".into());
        match &s.service {
            Some(svc) => by_service.entry((ns, svc.clone())).or_default().push(slice),
            None => debug!(
                "{}: EndpointSlice without the {SERVICE_NAME_LABEL} label, ignored",
                describe(&slice.origin, "EndpointSlice", s.namespace.as_deref(), s.name.as_deref())
            ),
        }
    }
    for svc in services {
        let meta = &svc.obj.metadata;
        let key = (meta.namespace.clone().unwrap_or_else(|| "default".into()), meta.name.clone().unwrap_or_default());
        let svc_slices = by_service.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        translate_service(svc, svc_slices, opts, &mut out);
    }
    for p in &out.problems {
        warn!("{p}");
    }
    out
}

/// The translation kept from one sync to the next. Only Services whose
/// store generation moved (the Service or one of its slices changed) are
/// translated again and patched in, so a change costs the same with 10 or
/// 10,000 Services in the store.
///
/// When two Services claim the same frontend address, the one that had it
/// first keeps it (a full [`translate`] gives it to the first in name
/// order); the other is retried whenever anything changes.
#[derive(Debug, Default)]
pub struct Translator {
    out: Translation,
    parts: foldhash::HashMap<ObjectKey, Part>,
    conflicted: BTreeSet<ObjectKey>,
    changes: Changes,
}

/// What the last [`Translator::update`] translated again: those Services
/// (added, changed or removed), and every frontend address they had
/// before or have now. Anything else in the translation is as it was.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Every Service was looked at (the first update, or after a relist):
    /// the sets below are left empty, and anything may have changed. (Kept,
    /// they would hold every Service of a first list at the agent's peak
    /// of memory.)
    pub all: bool,
    pub services: BTreeSet<ServiceRef>,
    pub frontends: BTreeSet<FrontendAddr>,
    pub frontends6: BTreeSet<FrontendAddr<Ipv6Addr>>,
}

impl Changes {
    /// The frontend addresses of `part`, unless every Service was looked at.
    fn note(&mut self, part: &Part) {
        if !self.all {
            self.frontends.extend(part.frontends.iter().copied());
            self.frontends6.extend(part.frontends6.iter().copied());
        }
    }
}

/// What one Service contributed to the translation.
#[derive(Debug, Default)]
struct Part {
    generation: u64,
    frontends: Vec<FrontendAddr>,
    frontends6: Vec<FrontendAddr<Ipv6Addr>>,
    problems: Vec<String>,
    /// Whether it has a model in `services` (under its own key).
    model: bool,
}

impl Translator {
    /// Brings the translation up to date with `store`. New problems are
    /// logged once.
    pub fn update(&mut self, store: &mut Store, opts: &TranslateOptions) -> &Translation {
        self.changes = Changes::default();
        // The first time (or after many changes), every Service we know
        // of; then only those the store says were touched (added, changed,
        // removed, or their slices).
        let (candidates, all): (Vec<ObjectKey>, bool) = match store.take_touched() {
            Touched::Some(set) if !self.parts.is_empty() => (set.into_iter().collect(), false),
            _ => (
                store
                    .services_by_key()
                    .map(|(k, _)| k.clone())
                    .chain(self.parts.keys().filter(|k| !store.has_service(k)).cloned())
                    .collect(),
                true,
            ),
        };
        let mut dirty: BTreeSet<ObjectKey> = BTreeSet::new();
        for key in candidates {
            let had = self.parts.get(&key).map(|p| p.generation);
            let present = store.has_service(&key);
            if (present && had != Some(store.generation(&key))) || (!present && had.is_some()) {
                dirty.insert(key);
            }
        }
        if dirty.is_empty() {
            return &self.out;
        }
        dirty.extend(std::mem::take(&mut self.conflicted));
        self.changes.all = all;
        for key in &dirty {
            self.remove_part(key);
            if !all {
                self.changes.services.insert(ServiceRef { namespace: key.namespace.clone(), name: key.name.clone() });
            }
        }
        for key in dirty {
            let Some(svc) = store.service(&key) else {
                continue;
            };
            let svc_slices: Vec<&Sourced<Slice>> = store.slices_of(&key).collect();
            let mut scratch = Translation::default();
            translate_service(svc, &svc_slices, opts, &mut scratch);
            let mut part = Part { generation: store.generation(&key), ..Part::default() };
            let what = describe(&svc.origin, "Service", Some(&key.namespace), Some(&key.name));
            let clean4 = merge(&what, scratch.desired, &mut self.out.desired, &mut part.frontends, &mut scratch.problems);
            let clean6 = merge(&what, scratch.desired6, &mut self.out.desired6, &mut part.frontends6, &mut scratch.problems);
            if !(clean4 && clean6) {
                self.conflicted.insert(key.clone());
            }
            self.changes.note(&part);
            for (r, m) in scratch.services {
                part.model = true;
                self.out.services.insert(r, m);
            }
            for p in scratch.problems {
                if self.out.problems.insert(p.clone()) {
                    warn!("{p}");
                }
                part.problems.push(p);
            }
            self.parts.insert(key, part);
        }
        &self.out
    }

    pub fn translation(&self) -> &Translation {
        &self.out
    }

    /// What the last [`Translator::update`] changed.
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// Whether two Services claim one frontend address (the one that had
    /// it first keeps it): the loser is translated again at every update.
    pub fn has_conflicts(&self) -> bool {
        !self.conflicted.is_empty()
    }

    fn remove_part(&mut self, key: &ObjectKey) {
        let Some(part) = self.parts.remove(key) else { return };
        self.changes.note(&part);
        for addr in &part.frontends {
            self.out.desired.remove(addr);
        }
        for addr in &part.frontends6 {
            self.out.desired6.remove(addr);
        }
        for p in &part.problems {
            self.out.problems.remove(p);
        }
        if part.model {
            self.out.services.remove(&ServiceRef { namespace: key.namespace.clone(), name: key.name.clone() });
        }
    }
}

/// Moves one Service's frontends of a family into the translation; those
/// whose address another Service has are skipped and reported. `false`
/// when there was such a conflict.
fn merge<A: IpFamily>(
    what: &str,
    from: Desired<A>,
    into: &mut Desired<A>,
    taken: &mut Vec<FrontendAddr<A>>,
    problems: &mut BTreeSet<String>,
) -> bool {
    let mut clean = true;
    for (addr, fe) in from {
        if let Some(other) = into.get(&addr) {
            problems.insert(format!("{what}: frontend {addr} already belongs to {}, skipped", other.name));
            clean = false;
            continue;
        }
        taken.push(addr);
        into.insert(addr, fe);
    }
    clean
}

/// `origin: Kind ns/name` (or without the origin when it is empty).
pub fn describe(origin: &str, kind: &str, ns: Option<&str>, name: Option<&str>) -> String {
    let obj = format!("{kind} {}/{}", ns.unwrap_or("default"), name.unwrap_or("<unnamed>"));
    if origin.is_empty() { obj } else { format!("{origin}: {obj}") }
}

fn translate_service(svc: &Sourced<Service>, svc_slices: &[&Sourced<Slice>], opts: &TranslateOptions, out: &mut Translation) {
    let meta = &svc.obj.metadata;
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let Some(name) = meta.name.clone() else {
        out.problems.insert(format!("{}: Service without metadata.name, skipped", if svc.origin.is_empty() { "API" } else { &svc.origin }));
        return;
    };
    let what = describe(&svc.origin, "Service", Some(&ns), Some(&name));
    if meta.labels.as_ref().is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)) {
        debug!("{what}: labelled {SERVICE_PROXY_NAME_LABEL}, left to another proxy");
        return;
    }
    let Some(spec) = &svc.obj.spec else {
        out.problems.insert(format!("{what}: no spec, skipped"));
        return;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return;
    }
    let all_ips = cluster_ips(&what, spec.cluster_ips.as_deref(), spec.cluster_ip.as_deref(), out);
    if all_ips.is_empty() {
        return; // headless, or nothing usable
    }
    let mut model = service_model(&what, svc, spec, opts, out);
    model.cluster_ips = all_ips;
    let frontend_flags = model.flags & !svc_flags::SOURCE_RANGES;
    let affinity_timeout = model.affinity_timeout.unwrap_or(0);
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let Some((proto, number)) = service_port(&what, i, port, out) else {
            continue;
        };
        model.ports.push(PortModel {
            name: port.name.clone().filter(|n| !n.is_empty()),
            proto,
            port: number,
            node_port: optional_port(&what, &format!("spec.ports[{i}].nodePort"), port.node_port, out),
        });
        let label = match port.name.as_deref() {
            Some(n) if !n.is_empty() => format!("{ns}/{name}:{n}"),
            _ => format!("{ns}/{name}:{number}"),
        };
        let port = PortFrontends {
            what: &what,
            index: i,
            port_name: port.name.as_deref(),
            proto,
            port: number,
            label: &label,
            flags: frontend_flags,
            affinity_timeout,
        };
        port.add(&model.cluster_ips, svc_slices, &mut out.desired, &mut out.problems);
        port.add(&model.cluster_ips, svc_slices, &mut out.desired6, &mut out.problems);
    }
    out.services.insert(ServiceRef { namespace: ns, name }, model);
}

/// One ServicePort of a Service, as its frontends of either family get it.
struct PortFrontends<'a> {
    what: &'a str,
    index: usize,
    port_name: Option<&'a str>,
    proto: Protocol,
    port: u16,
    label: &'a str,
    flags: u32,
    affinity_timeout: u32,
}

impl PortFrontends<'_> {
    /// The port's frontends of family `A`: one per ClusterIP of that
    /// family, each with the endpoints of that family's slices.
    fn add<A: IpFamily>(&self, ips: &[IpAddr], slices: &[&Sourced<Slice>], desired: &mut Desired<A>, problems: &mut BTreeSet<String>) {
        let ips: Vec<A> = ips.iter().filter_map(|ip| A::of(*ip)).collect();
        if ips.is_empty() {
            return;
        }
        let backends = backends_for::<A>(self.port_name, self.proto, slices, problems);
        for ip in ips {
            let addr = FrontendAddr::new(ip, self.port, self.proto);
            if let Some(other) = desired.get(&addr) {
                problems.insert(format!("{}: frontend {addr} already belongs to {}, port {} skipped", self.what, other.name, self.index));
                continue;
            }
            let fe = Frontend {
                addr,
                name: self.label.to_string(),
                backends: backends.clone(),
                flags: self.flags,
                affinity_timeout: self.affinity_timeout,
            };
            desired.insert(addr, fe);
        }
    }
}

/// The Service-level fields, validated; flags for its frontends.
fn service_model(what: &str, svc: &Sourced<Service>, spec: &ServiceSpec, opts: &TranslateOptions, out: &mut Translation) -> ServiceModel {
    let type_name = spec.type_.as_deref().unwrap_or("ClusterIP");
    let service_type = ServiceType::parse(type_name).unwrap_or_else(|| {
        out.problems.insert(format!("{what}: field spec.type: unknown type {type_name:?}, treated as ClusterIP"));
        ServiceType::ClusterIp
    });
    let mut m = ServiceModel { service_type, ..ServiceModel::default() };

    // Session affinity.
    match spec.session_affinity.as_deref() {
        None | Some("None") | Some("") => {}
        Some("ClientIP") => {
            let timeout = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds);
            let timeout = match timeout {
                None => DEFAULT_AFFINITY_TIMEOUT,
                Some(t) if t > 0 && t as i64 <= MAX_AFFINITY_TIMEOUT as i64 => t as u32,
                Some(t) => {
                    out.problems.insert(format!(
                        "{what}: field spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} is not in 1-{MAX_AFFINITY_TIMEOUT}; using {DEFAULT_AFFINITY_TIMEOUT}"
                    ));
                    DEFAULT_AFFINITY_TIMEOUT
                }
            };
            m.affinity_timeout = Some(timeout);
            m.flags |= svc_flags::AFFINITY;
        }
        Some(other) => {
            out.problems.insert(format!("{what}: field spec.sessionAffinity: unknown value {other:?}, no affinity"));
        }
    }

    // Backend selection.
    let annotation = svc.obj.metadata.annotations.as_ref().and_then(|a| a.get(BACKEND_SELECTION_ANNOTATION));
    m.backend_selection = match annotation.map(|a| a.parse::<BackendSelection>()) {
        None => opts.default_selection,
        Some(Ok(sel)) => sel,
        Some(Err(e)) => {
            out.problems.insert(format!(
                "{what}: annotation {BACKEND_SELECTION_ANNOTATION}: {e}; using the agent default ({})",
                opts.default_selection
            ));
            opts.default_selection
        }
    };
    if m.backend_selection == BackendSelection::Maglev {
        m.flags |= svc_flags::MAGLEV;
    }

    // Traffic policies.
    m.external_traffic_policy = traffic_policy(what, "spec.externalTrafficPolicy", spec.external_traffic_policy.as_deref(), out);
    m.internal_traffic_policy = traffic_policy(what, "spec.internalTrafficPolicy", spec.internal_traffic_policy.as_deref(), out);
    if m.external_traffic_policy == TrafficPolicy::Local {
        m.flags |= svc_flags::EXT_LOCAL;
    }
    if m.internal_traffic_policy == TrafficPolicy::Local {
        m.flags |= svc_flags::INT_LOCAL;
    }
    // Topology: kube-proxy acts on the EndpointSlice hints the controller
    // derives from this field (see `crate::topology`); the field itself is
    // only validated.
    match spec.traffic_distribution.as_deref() {
        None | Some("") => {}
        Some(d @ ("PreferClose" | "PreferSameZone" | "PreferSameNode")) => m.traffic_distribution = Some(d.to_string()),
        Some(other) => {
            out.problems.insert(format!("{what}: field spec.trafficDistribution: unknown value {other:?}, ignored"));
        }
    }

    // North-south addresses.
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        match ip.parse::<IpAddr>() {
            Ok(a) => m.external_ips.push(a),
            Err(_) => {
                out.problems.insert(format!("{what}: field spec.externalIPs[{i}]: invalid IP address {ip:?}, skipped"));
            }
        }
    }
    let ingress = svc.obj.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        // A hostname-only ingress (some cloud LBs) has no IP to serve.
        let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        // KEP-1860: with `ipMode: Proxy` the load balancer delivers to the
        // node's address and NodePort (or the pod), so the ingress IP is
        // not programmed and in-cluster clients go through the load
        // balancer, as with kube-proxy.
        match ing.ip_mode.as_deref() {
            None | Some("") | Some("VIP") => {}
            Some("Proxy") => {
                debug!("{what}: status.loadBalancer.ingress[{i}] {ip} has ipMode Proxy: not programmed");
                continue;
            }
            Some(other) => {
                out.problems
                    .insert(format!("{what}: field status.loadBalancer.ingress[{i}].ipMode: unknown mode {other:?}, treated as VIP"));
            }
        }
        match ip.parse::<IpAddr>() {
            Ok(a) => m.load_balancer_ips.push(a),
            Err(_) => {
                out.problems.insert(format!("{what}: field status.loadBalancer.ingress[{i}].ip: invalid IP address {ip:?}, skipped"));
            }
        }
    }
    for (i, range) in spec.load_balancer_source_ranges.iter().flatten().enumerate() {
        match range.parse::<Cidr>() {
            Ok(c) => m.source_ranges.push(c),
            Err(e) => {
                out.problems.insert(format!("{what}: field spec.loadBalancerSourceRanges[{i}]: {e}, skipped"));
            }
        }
    }
    if !m.source_ranges.is_empty() {
        m.flags |= svc_flags::SOURCE_RANGES;
    }
    m.health_check_node_port = optional_port(what, "spec.healthCheckNodePort", spec.health_check_node_port, out);

    // Dual-stack.
    for (i, family) in spec.ip_families.iter().flatten().enumerate() {
        match family.as_str() {
            "IPv4" | "IPv6" => m.ip_families.push(family.clone()),
            other => {
                out.problems.insert(format!("{what}: field spec.ipFamilies[{i}]: unknown family {other:?}, ignored"));
            }
        }
    }
    match spec.ip_family_policy.as_deref() {
        None => {}
        Some(p @ ("SingleStack" | "PreferDualStack" | "RequireDualStack")) => {
            m.ip_family_policy = Some(p.to_string());
        }
        Some(other) => {
            out.problems.insert(format!("{what}: field spec.ipFamilyPolicy: unknown policy {other:?}, ignored"));
        }
    }
    m
}

fn traffic_policy(what: &str, field: &str, value: Option<&str>, out: &mut Translation) -> TrafficPolicy {
    match value {
        None | Some("") | Some("Cluster") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(other) => {
            out.problems.insert(format!("{what}: field {field}: unknown policy {other:?}, using Cluster"));
            TrafficPolicy::Cluster
        }
    }
}

/// An optional port field (NodePort, health check NodePort): absent or 0
/// means none; anything outside 1-65535 is reported.
fn optional_port(what: &str, field: &str, value: Option<i32>, out: &mut Translation) -> Option<u16> {
    match value {
        None | Some(0) => None,
        Some(n) => match u16::try_from(n) {
            Ok(p) => Some(p),
            Err(_) => {
                out.problems.insert(format!("{what}: field {field}: {n} is not a port (1-65535), ignored"));
                None
            }
        },
    }
}

fn cluster_ips(what: &str, ips: Option<&[String]>, ip: Option<&str>, out: &mut Translation) -> Vec<IpAddr> {
    let (field, list): (&str, Vec<&str>) = match ips {
        Some(ips) if !ips.is_empty() => ("spec.clusterIPs", ips.iter().map(String::as_str).collect()),
        _ => ("spec.clusterIP", ip.into_iter().collect()),
    };
    let mut ips = Vec::new();
    for (i, s) in list.into_iter().enumerate() {
        match s {
            "" | "None" => {}
            s => match s.parse::<IpAddr>() {
                Ok(a) => ips.push(a),
                Err(_) => {
                    out.problems.insert(format!("{what}: field {field}[{i}]: invalid IP address {s:?}, skipped"));
                }
            },
        }
    }
    ips
}

fn protocol(s: Option<&str>) -> Result<Protocol, String> {
    match s.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Err("SCTP is not supported by lb".into()),
        other => Err(format!("unknown protocol {other:?}")),
    }
}

fn service_port(what: &str, i: usize, port: &ServicePort, out: &mut Translation) -> Option<(Protocol, u16)> {
    let proto = match protocol(port.protocol.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            out.problems.insert(format!("{what}: field spec.ports[{i}].protocol: {e}; port skipped"));
            return None;
        }
    };
    match u16::try_from(port.port) {
        Ok(n) if n > 0 => Some((proto, n)),
        _ => {
            out.problems.insert(format!("{what}: field spec.ports[{i}].port: {} is not a port (1-65535); port skipped", port.port));
            None
        }
    }
}

/// Backends of family `A` for one ServicePort across all of the
/// Service's slices of that family.
fn backends_for<A: IpFamily>(
    port_name: Option<&str>,
    proto: Protocol,
    slices: &[&Sourced<Slice>],
    problems: &mut BTreeSet<String>,
) -> Vec<Backend<A>> {
    let want_name = port_name.unwrap_or("");
    // Deduplicated by address; the first slice that lists an endpoint
    // gives its node and zone.
    let mut ready: BTreeMap<BackendAddr<A>, Backend<A>> = BTreeMap::new();
    let mut terminating: BTreeMap<BackendAddr<A>, Backend<A>> = BTreeMap::new();
    for slice in slices {
        let s = &slice.obj;
        let what = describe(&slice.origin, "EndpointSlice", s.namespace.as_deref(), s.name.as_deref());
        if s.address_type != A::NAME {
            continue;
        }
        let matching = s
            .ports
            .iter()
            .enumerate()
            .find(|(_, p)| p.name.as_deref().unwrap_or("") == want_name && protocol(p.protocol.as_deref()).ok() == Some(proto));
        let Some((pi, slice_port)) = matching else {
            continue;
        };
        let target = match slice_port.port.map(u16::try_from) {
            Some(Ok(n)) if n > 0 => n,
            other => {
                problems.insert(format!(
                    "{what}: field ports[{pi}].port: {:?} is not a port (1-65535); slice skipped for this port",
                    other.and_then(Result::ok)
                ));
                continue;
            }
        };
        for (ei, ep) in s.endpoints.iter().enumerate() {
            // API semantics: a nil `ready` or `serving` means true (the
            // documented default, as kube-proxy reads it); a nil
            // `terminating` means false.
            let is_ready = ep.ready.unwrap_or(true);
            let serving = ep.serving.unwrap_or(true);
            let is_terminating = ep.terminating.unwrap_or(false);
            // Like kube-proxy, only the first address of an endpoint is used.
            let Some(first) = ep.address.as_deref() else {
                continue;
            };
            let ip = match first.parse::<IpAddr>() {
                Ok(ip) => match A::of(ip) {
                    Some(ip) => ip,
                    None => {
                        let other = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
                        problems.insert(format!(
                            "{what}: field endpoints[{ei}].addresses[0]: {first:?} is an {other} address in an {} slice; endpoint skipped",
                            A::NAME
                        ));
                        continue;
                    }
                },
                Err(_) => {
                    problems.insert(format!(
                        "{what}: field endpoints[{ei}].addresses[0]: {first:?} is not an {} address; endpoint skipped",
                        A::NAME
                    ));
                    continue;
                }
            };
            let addr = BackendAddr { ip, port: target, proto };
            let backend = |terminating| Backend {
                addr,
                terminating,
                node_name: ep.node_name.clone(),
                zone: ep.zone.clone(),
                hints: ep.hints.clone(),
            };
            if is_ready {
                ready.entry(addr).or_insert_with(|| backend(false));
            } else if serving && is_terminating {
                terminating.entry(addr).or_insert_with(|| backend(true));
            }
        }
    }
    let terminating: Vec<Backend<A>> = terminating.into_iter().filter(|(addr, _)| !ready.contains_key(addr)).map(|(_, b)| b).collect();
    ready.into_values().chain(terminating).collect()
}

#[cfg(test)]
mod tests;
