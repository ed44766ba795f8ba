//! Kubernetes Services and EndpointSlices -> the desired datapath state,
//! with kube-proxy's semantics.
//!
//! - Every ClusterIP (IPv4) x every port is a frontend; headless and
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

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort},
    discovery::v1::EndpointSlice,
};
use tracing::{debug, warn};

use crate::{
    manifest::Sourced,
    model::{Backend, BackendAddr, Desired, Frontend, FrontendAddr, Protocol},
};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

#[derive(Debug, Default)]
pub struct Translation {
    pub desired: Desired,
    /// Warnings about skipped objects or fields, deduplicated.
    pub problems: BTreeSet<String>,
}

pub fn translate(services: &[Sourced<Service>], slices: &[Sourced<EndpointSlice>]) -> Translation {
    let mut out = Translation::default();
    let mut by_service: BTreeMap<(String, String), Vec<&Sourced<EndpointSlice>>> = BTreeMap::new();
    for slice in slices {
        let meta = &slice.obj.metadata;
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        match meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
            Some(svc) => by_service.entry((ns, svc.clone())).or_default().push(slice),
            None => debug!(
                "{}: EndpointSlice without the {SERVICE_NAME_LABEL} label, ignored",
                slice.origin
            ),
        }
    }
    for svc in services {
        translate_service(svc, &by_service, &mut out);
    }
    for p in &out.problems {
        warn!("{p}");
    }
    out
}

fn translate_service(
    svc: &Sourced<Service>,
    slices: &BTreeMap<(String, String), Vec<&Sourced<EndpointSlice>>>,
    out: &mut Translation,
) {
    let meta = &svc.obj.metadata;
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let Some(name) = meta.name.clone() else {
        out.problems
            .insert(format!("{}: Service without metadata.name, skipped", svc.origin));
        return;
    };
    let what = format!("{}: Service {ns}/{name}", svc.origin);
    if meta
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
    {
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
    let ips = cluster_ips(&what, spec.cluster_ips.as_deref(), spec.cluster_ip.as_deref(), out);
    if ips.is_empty() {
        return; // headless, or nothing usable
    }
    let svc_slices = slices.get(&(ns.clone(), name.clone())).map(Vec::as_slice).unwrap_or(&[]);
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let Some((proto, number)) = service_port(&what, i, port, out) else {
            continue;
        };
        let backends = backends_for(port.name.as_deref(), proto, svc_slices, out);
        let label = match port.name.as_deref() {
            Some(n) if !n.is_empty() => format!("{ns}/{name}:{n}"),
            _ => format!("{ns}/{name}:{number}"),
        };
        for ip in &ips {
            let addr = FrontendAddr { ip: *ip, port: number, proto };
            if let Some(other) = out.desired.get(&addr) {
                out.problems.insert(format!(
                    "{what}: frontend {addr} already belongs to {}, port {} skipped",
                    other.name, i
                ));
                continue;
            }
            out.desired.insert(
                addr,
                Frontend {
                    addr,
                    name: label.clone(),
                    backends: backends.clone(),
                    flags: 0,
                    affinity_timeout: 0,
                },
            );
        }
    }
}

fn cluster_ips(
    what: &str,
    ips: Option<&[String]>,
    ip: Option<&str>,
    out: &mut Translation,
) -> Vec<Ipv4Addr> {
    let (field, list): (&str, Vec<&str>) = match ips {
        Some(ips) if !ips.is_empty() => ("spec.clusterIPs", ips.iter().map(String::as_str).collect()),
        _ => ("spec.clusterIP", ip.into_iter().collect()),
    };
    let mut v4 = Vec::new();
    for (i, s) in list.into_iter().enumerate() {
        match s {
            "" | "None" => {}
            s => match s.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) => v4.push(a),
                Ok(IpAddr::V6(_)) => debug!("{what}: IPv6 ClusterIP {s} not handled yet"),
                Err(_) => {
                    out.problems
                        .insert(format!("{what}: field {field}[{i}]: invalid IP address {s:?}, skipped"));
                }
            },
        }
    }
    v4
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
            out.problems
                .insert(format!("{what}: field spec.ports[{i}].protocol: {e}; port skipped"));
            return None;
        }
    };
    match u16::try_from(port.port) {
        Ok(n) if n > 0 => Some((proto, n)),
        _ => {
            out.problems.insert(format!(
                "{what}: field spec.ports[{i}].port: {} is not a port (1-65535); port skipped",
                port.port
            ));
            None
        }
    }
}

/// Backends for one ServicePort across all of the Service's slices.
fn backends_for(
    port_name: Option<&str>,
    proto: Protocol,
    slices: &[&Sourced<EndpointSlice>],
    out: &mut Translation,
) -> Vec<Backend> {
    let want_name = port_name.unwrap_or("");
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        let s = &slice.obj;
        let what = format!(
            "{}: EndpointSlice {}/{}",
            slice.origin,
            s.metadata.namespace.as_deref().unwrap_or("default"),
            s.metadata.name.as_deref().unwrap_or("<unnamed>")
        );
        if s.address_type != "IPv4" {
            continue;
        }
        let matching = s.ports.iter().flatten().enumerate().find(|(_, p)| {
            p.name.as_deref().unwrap_or("") == want_name
                && protocol(p.protocol.as_deref()).ok() == Some(proto)
        });
        let Some((pi, slice_port)) = matching else {
            continue;
        };
        let target = match slice_port.port.map(u16::try_from) {
            Some(Ok(n)) if n > 0 => n,
            other => {
                out.problems.insert(format!(
                    "{what}: field ports[{pi}].port: {:?} is not a port (1-65535); slice skipped for this port",
                    other.and_then(Result::ok)
                ));
                continue;
            }
        };
        for (ei, ep) in s.endpoints.iter().enumerate() {
            let cond = ep.conditions.as_ref();
            // API semantics: a nil `ready` means ready; a nil `serving`
            // means the same as `ready`; a nil `terminating` means false.
            let is_ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            // Like kube-proxy, only the first address of an endpoint is used.
            let Some(first) = ep.addresses.first() else {
                continue;
            };
            let ip = match first.parse::<Ipv4Addr>() {
                Ok(ip) => ip,
                Err(_) => {
                    out.problems.insert(format!(
                        "{what}: field endpoints[{ei}].addresses[0]: {first:?} is not an IPv4 address; endpoint skipped"
                    ));
                    continue;
                }
            };
            let addr = BackendAddr { ip, port: target, proto };
            if is_ready {
                ready.insert(addr);
            } else if serving && is_terminating {
                terminating.insert(addr);
            }
        }
    }
    let terminating: Vec<Backend> = terminating
        .difference(&ready)
        .map(|addr| Backend { addr: *addr, terminating: true })
        .collect();
    ready
        .into_iter()
        .map(|addr| Backend { addr, terminating: false })
        .chain(terminating)
        .collect()
}

#[cfg(test)]
mod tests;
