//! North-south frontends: NodePorts, external IPs and LoadBalancer ingress
//! IPs, served by the XDP program on the external interfaces.
//!
//! - [`plan`] turns the per-Service model of a [`Translation`] into
//!   frontends, as kube-proxy does: one NodePort frontend per node address
//!   (so the tc program serves pods and the socket hooks serve the host
//!   with the very same entries: no "is this a local address" check is
//!   needed in the datapath); one frontend per external IP and per
//!   LoadBalancer ingress IP. Their backends are the Service's, or only this
//!   node's with `externalTrafficPolicy: Local`, which holds only for
//!   traffic from outside: a second entry per address gives pods and the
//!   host every endpoint, as kube-proxy does. `loadBalancerSourceRanges`
//!   apply to the LoadBalancer ingress frontends (as kube-proxy), and the
//!   health check NodePort reports this node's ready endpoints.
//! - [`NorthSouth`] is the agent side at run time: it attaches the XDP
//!   program, writes this node's settings (`LB_NODE`, `LB_DEVICES`), knows
//!   what [`plan`] needs about the node, logs each planning problem once
//!   and keeps the health check servers in step ([`crate::sync`] calls it).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use anyhow::Context;
use lb_common::{Device, IFNAME_LEN, Node6Config, NodeConfig, addr6, node_flags, svc_flags};
use tracing::{info, warn};

use crate::{
    datapath::{Datapath, XdpAttach, xdp_mode_name, xdp_why_text},
    host::{Sysctls, default_route_interfaces, ifindex, interface_addresses, interface_addresses6},
    model::{Backend, Cidr, Desired, Frontend, FrontendAddr, IpFamily, ServiceModel, ServiceRef, ServiceType, TrafficPolicy},
    probes::Heartbeat,
    reconcile::Reconciler,
    service_health::HealthChecks,
    topology,
    translate::{Changes, Translation},
};

/// kube-proxy's default `--service-node-port-range`.
pub const DEFAULT_NODEPORT_RANGE: PortRange = PortRange { min: 30_000, max: 32_767 };
/// SNAT source ports: above Linux's default ephemeral range
/// (32768-60999), so they never collide with the node's own connections.
pub const DEFAULT_SNAT_PORTS: PortRange = PortRange { min: 61_000, max: 65_535 };

/// An inclusive port range, `min-max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }

    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

/// `--snat-ports` beside the NodePort range: an error when they share a
/// port (the reply of a SNATed flow would come back to a NodePort).
pub fn check_snat_ports(snat: PortRange, nodeport: PortRange) -> Result<(), String> {
    if snat.overlaps(&nodeport) {
        return Err(format!(
            "--snat-ports {snat} overlaps --nodeport-range {nodeport}: the replies of SNATed flows would arrive at NodePorts; keep them apart"
        ));
    }
    Ok(())
}

/// A warning when `--snat-ports` shares ports with the node's ephemeral
/// range (`net.ipv4.ip_local_port_range`, `ephemeral`): the node's own
/// connections from its SNAT address could take a tuple a SNATed flow
/// holds. (Linux's default range ends at 60999, below the default SNAT
/// ports.)
pub fn snat_ports_warning(snat: PortRange, ephemeral: PortRange) -> Option<String> {
    snat.overlaps(&ephemeral).then(|| {
        format!(
            "--snat-ports {snat} overlaps the node's ephemeral ports (net.ipv4.ip_local_port_range {ephemeral}): the node's own connections may clash with SNATed flows; keep them apart, or reserve the SNAT ports (net.ipv4.ip_local_reserved_ports)"
        )
    })
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?} is not a port range (min-max)"))?;
        let p = |x: &str| x.trim().parse::<u16>().map_err(|_| format!("{s:?}: {x:?} is not a port"));
        let (min, max) = (p(a)?, p(b)?);
        if min == 0 || min > max {
            return Err(format!("{s:?}: need 1 <= min <= max"));
        }
        Ok(PortRange { min, max })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// One item of `--nodeport-addresses`, as kube-proxy's flag: a CIDR, or
/// `primary` (the node's primary addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodePortAddress {
    Primary,
    Cidr(Cidr),
}

impl FromStr for NodePortAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "primary" {
            return Ok(NodePortAddress::Primary);
        }
        s.parse().map(NodePortAddress::Cidr).map_err(|e| format!("{e}; a NodePort address is a CIDR or `primary`"))
    }
}

impl fmt::Display for NodePortAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodePortAddress::Primary => f.write_str("primary"),
            NodePortAddress::Cidr(c) => c.fmt(f),
        }
    }
}

/// What the planner needs to know about this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// `spec.nodeName` of this node's endpoints; `None`: no endpoint is
    /// known to be local.
    pub node_name: Option<String>,
    /// Addresses NodePorts are served on.
    pub node_ips: Vec<Ipv4Addr>,
    /// IPv6 addresses NodePorts are served on.
    pub node_ips6: Vec<Ipv6Addr>,
    pub nodeport_range: PortRange,
    /// This node's `topology.kubernetes.io/zone` label, for topology hints.
    pub zone: Option<String>,
}

/// The node-specific part of a sync.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// ClusterIP frontends of `internalTrafficPolicy: Local` Services with
    /// only this node's endpoints, or narrowed by topology hints: they
    /// replace the translation's.
    pub internal: Desired,
    /// The same for IPv6 ClusterIPs.
    pub internal6: Desired<Ipv6Addr>,
    /// North-south frontends.
    pub frontends: Desired,
    /// IPv6 north-south frontends.
    pub frontends6: Desired<Ipv6Addr>,
    /// loadBalancerSourceRanges of the frontends that enforce them.
    pub source_ranges: BTreeMap<FrontendAddr, Vec<Cidr>>,
    /// The same for the IPv6 frontends.
    pub source_ranges6: BTreeMap<FrontendAddr<Ipv6Addr>, Vec<Cidr>>,
    /// Health check NodePorts: Service -> (port, local ready endpoints).
    pub health_checks: BTreeMap<ServiceRef, (u16, usize)>,
    pub problems: BTreeSet<String>,
    /// North-south addresses not planned because another frontend has
    /// them (each also a problem): a change of that frontend may free them.
    pub refused: BTreeSet<FrontendAddr>,
    /// The same for IPv6.
    pub refused6: BTreeSet<FrontendAddr<Ipv6Addr>>,
}

impl Plan {
    /// Where one Service's IPv4 frontends are planned, other Services'
    /// north-south ones being `claimed`.
    fn v4<'a>(&'a mut self, claimed: &'a Desired, t: &'a Translation, node: &'a NodeInfo) -> FamilyPlan<'a, Ipv4Addr> {
        FamilyPlan {
            desired: &t.desired,
            node_ips: &node.node_ips,
            internal: &mut self.internal,
            frontends: &mut self.frontends,
            claimed,
            source_ranges: &mut self.source_ranges,
            problems: &mut self.problems,
            refused: &mut self.refused,
        }
    }

    /// Where one Service's IPv6 frontends are planned.
    fn v6<'a>(&'a mut self, claimed: &'a Desired<Ipv6Addr>, t: &'a Translation, node: &'a NodeInfo) -> FamilyPlan<'a, Ipv6Addr> {
        FamilyPlan {
            desired: &t.desired6,
            node_ips: &node.node_ips6,
            internal: &mut self.internal6,
            frontends: &mut self.frontends6,
            claimed,
            source_ranges: &mut self.source_ranges6,
            problems: &mut self.problems,
            refused: &mut self.refused6,
        }
    }

    /// Adds the plan of one Service, `own`, and says what it added.
    fn absorb(&mut self, own: Plan) -> Part {
        let part = Part {
            frontends: own.frontends.keys().copied().collect(),
            frontends6: own.frontends6.keys().copied().collect(),
            internal: own.internal.keys().copied().collect(),
            internal6: own.internal6.keys().copied().collect(),
            problems: own.problems.iter().cloned().collect(),
        };
        self.internal.extend(own.internal);
        self.internal6.extend(own.internal6);
        self.frontends.extend(own.frontends);
        self.frontends6.extend(own.frontends6);
        self.source_ranges.extend(own.source_ranges);
        self.source_ranges6.extend(own.source_ranges6);
        self.health_checks.extend(own.health_checks);
        self.problems.extend(own.problems);
        self.refused.extend(own.refused);
        self.refused6.extend(own.refused6);
        part
    }

    /// Takes out what Service `svc` added (`part`).
    fn take_out(&mut self, svc: &ServiceRef, part: &Part) {
        for a in &part.frontends {
            self.frontends.remove(a);
            self.source_ranges.remove(a);
        }
        for a in &part.frontends6 {
            self.frontends6.remove(a);
            self.source_ranges6.remove(a);
        }
        for a in &part.internal {
            self.internal.remove(a);
        }
        for a in &part.internal6 {
            self.internal6.remove(a);
        }
        for p in &part.problems {
            self.problems.remove(p);
        }
        self.health_checks.remove(svc);
    }
}

/// Frontend flags the north-south entries inherit from the Service
/// (`internalTrafficPolicy` is not one: it is about in-cluster clients of
/// the ClusterIP).
const INHERITED: u32 = svc_flags::AFFINITY | svc_flags::MAGLEV | svc_flags::EXT_LOCAL;

/// Plans the node-specific frontends of every Service in `t`, of both
/// families: north-south ones, and the ClusterIPs of
/// `internalTrafficPolicy: Local` Services or with topology hints.
pub fn plan(t: &Translation, node: &NodeInfo) -> Plan {
    Planned::whole(t, node).plan
}

/// What one Service added to a plan (see [`Plan::absorb`]).
#[derive(Debug, Default)]
struct Part {
    frontends: Vec<FrontendAddr>,
    frontends6: Vec<FrontendAddr<Ipv6Addr>>,
    internal: Vec<FrontendAddr>,
    internal6: Vec<FrontendAddr<Ipv6Addr>>,
    problems: Vec<String>,
}

impl Part {
    fn is_empty(&self) -> bool {
        self.frontends.is_empty()
            && self.frontends6.is_empty()
            && self.internal.is_empty()
            && self.internal6.is_empty()
            && self.problems.is_empty()
    }
}

/// Plans Service `svc` (model `m`) into `out`, whose north-south
/// frontends (other Services') its own may not take, and says what it
/// added.
fn plan_service(svc: &ServiceRef, m: &ServiceModel, t: &Translation, node: &NodeInfo, out: &mut Plan) -> Part {
    let mut own = Plan::default();
    report_unserved(svc, m, &mut own.problems);
    // Addresses of this node's ready endpoints, for the health check, by
    // family (a dual-stack pod is one endpoint in each).
    let (mut local_ready, mut local_ready6) = (BTreeSet::new(), BTreeSet::new());
    // Each family from its ClusterIP (a dual-stack Service has one of
    // each): the in-cluster frontends, then the north-south ones on the
    // node's addresses of the family and the Service's external and
    // LoadBalancer IPs of it.
    if let Some(cluster_ip) = m.cluster_ips.iter().find_map(|ip| Ipv4Addr::of(*ip)) {
        let mut family = own.v4(&out.frontends, t, node);
        let topology = in_cluster(m, cluster_ip, node, &mut family);
        north_south(svc, m, cluster_ip, &topology, node, &mut family, &mut local_ready);
    }
    if let Some(cluster_ip) = m.cluster_ips.iter().find_map(|ip| Ipv6Addr::of(*ip)) {
        let mut family = own.v6(&out.frontends6, t, node);
        let topology = in_cluster(m, cluster_ip, node, &mut family);
        north_south(svc, m, cluster_ip, &topology, node, &mut family, &mut local_ready6);
    }
    let (is_lb, local) = (m.service_type == ServiceType::LoadBalancer, m.external_traffic_policy == TrafficPolicy::Local);
    if let (true, true, Some(hc)) = (is_lb, local, m.health_check_node_port) {
        own.health_checks.insert(svc.clone(), (hc, local_ready.len().max(local_ready6.len())));
    }
    out.absorb(own)
}

/// The plan kept from one sync to the next, with what each Service added
/// to it. A change plans only the Services the translator translated
/// again: their old part is taken out and they are planned anew, so a
/// change costs the same with 10 or 10,000 Services. Every Service is
/// planned again, as [`plan`] does, when the outcome could depend on the
/// order of the Services (the first in name order takes an address two
/// claim): whenever a north-south address is refused, before or after the
/// change, or a changed ClusterIP frontend is at a north-south frontend's
/// address, or two Services claim one ClusterIP address; when the node
/// changed (its addresses, name or zone); and when the translator looked
/// at every Service (a relist).
#[derive(Debug, Default)]
pub struct Planner {
    last: Option<Planned>,
}

#[derive(Debug)]
struct Planned {
    node: NodeInfo,
    plan: Plan,
    /// What each Service added to `plan` (none: nothing).
    parts: BTreeMap<ServiceRef, Part>,
}

/// The frontend addresses where a patched plan, with the translation, may
/// differ from the last: IPv4 and IPv6.
pub type Touched = (BTreeSet<FrontendAddr>, BTreeSet<FrontendAddr<Ipv6Addr>>);

impl Planner {
    /// Brings the plan up to date with the translation `t`, whose last
    /// update changed `changes` (`conflicts`: see
    /// `Translator::has_conflicts`), on `node`. With the plan comes, when
    /// it was patched, the frontend addresses where the plan and `t`
    /// together may differ from the last time (`None`: planned whole, any).
    pub fn update(&mut self, t: &Translation, changes: &Changes, conflicts: bool, node: &NodeInfo) -> (&Plan, Option<Touched>) {
        let patched = match &mut self.last {
            Some(last) if !changes.all && !conflicts && last.node == *node => last.patch(t, changes, node),
            _ => None,
        };
        if patched.is_none() {
            self.last = Some(Planned::whole(t, node));
        }
        (&self.last.as_ref().expect("planned above").plan, patched)
    }
}

impl Planned {
    /// Every Service planned, in name order.
    fn whole(t: &Translation, node: &NodeInfo) -> Planned {
        let mut plan = Plan::default();
        let parts = t
            .services
            .iter()
            .map(|(svc, m)| (svc, plan_service(svc, m, t, node, &mut plan)))
            .filter(|(_, part)| !part.is_empty())
            .map(|(svc, part)| (svc.clone(), part))
            .collect();
        Planned { node: node.clone(), plan, parts }
    }

    /// Plans the changed Services again; `None` (and a plan to throw away)
    /// where only a whole plan can say the outcome.
    fn patch(&mut self, t: &Translation, changes: &Changes, node: &NodeInfo) -> Option<Touched> {
        let p = &mut self.plan;
        let mut touched: Touched = (changes.frontends.clone(), changes.frontends6.clone());
        for svc in &changes.services {
            let old = self.parts.remove(svc).unwrap_or_default();
            p.take_out(svc, &old);
            touched.0.extend(old.frontends.iter().chain(&old.internal));
            touched.1.extend(old.frontends6.iter().chain(&old.internal6));
        }
        // A ClusterIP frontend where another Service's north-south one is
        // refuses that one in a whole plan.
        if changes.frontends.iter().any(|a| p.frontends.contains_key(a)) || changes.frontends6.iter().any(|a| p.frontends6.contains_key(a))
        {
            return None;
        }
        for svc in &changes.services {
            let Some(m) = t.services.get(svc) else { continue };
            let part = plan_service(svc, m, t, node, p);
            touched.0.extend(part.frontends.iter().chain(&part.internal));
            touched.1.extend(part.frontends6.iter().chain(&part.internal6));
            if !part.is_empty() {
                self.parts.insert(svc.clone(), part);
            }
        }
        // A refusal, new or from the last whole plan (a Service's part
        // does not hold its refusals): only a whole plan says who wins.
        (p.refused.is_empty() && p.refused6.is_empty()).then_some(touched)
    }
}

/// This node's ClusterIP frontends of Service `m` in the family of
/// `cluster_ip`, where they differ from the translation's (into
/// `out.internal`): narrowed by topology hints (see `crate::topology`)
/// unless `internalTrafficPolicy: Local`, which keeps this node's
/// endpoints only. Returns the topology-narrowed backends per ClusterIP
/// frontend, which the north-south ones use too unless
/// `externalTrafficPolicy: Local`.
fn in_cluster<A: IpFamily>(
    m: &ServiceModel,
    cluster_ip: A,
    node: &NodeInfo,
    out: &mut FamilyPlan<'_, A>,
) -> BTreeMap<FrontendAddr<A>, Vec<Backend<A>>> {
    let is_local = |b: &&Backend<A>| node.node_name.is_some() && b.node_name.as_deref() == node.node_name.as_deref();
    let mut topology = BTreeMap::new();
    for port in &m.ports {
        let cluster = FrontendAddr::new(cluster_ip, port.port, port.proto);
        let Some(fe) = out.desired.get(&cluster) else { continue };
        let narrowed = topology::cluster_backends(&fe.backends, node.node_name.as_deref(), node.zone.as_deref());
        if m.internal_traffic_policy == TrafficPolicy::Local {
            // In-cluster clients get this node's endpoints only, and are
            // dropped when there is none here, as kube-proxy does; a
            // Service with no endpoint anywhere still rejects.
            let mut flags = fe.flags;
            if fe.slot_backends().next().is_none() {
                flags &= !svc_flags::INT_LOCAL;
            }
            out.internal
                .insert(cluster, Frontend { backends: fe.backends.iter().filter(is_local).cloned().collect(), flags, ..fe.clone() });
        } else if let Some(backends) = &narrowed {
            out.internal.insert(cluster, Frontend { backends: backends.clone(), ..fe.clone() });
        }
        if let Some(backends) = narrowed {
            topology.insert(cluster, backends);
        }
    }
    topology
}

/// Where [`north_south`] plans one family's frontends.
struct FamilyPlan<'a, A: IpFamily> {
    /// The family's ClusterIP frontends (the translation's).
    desired: &'a Desired<A>,
    /// The node addresses NodePorts are served on.
    node_ips: &'a [A],
    /// ClusterIP frontends that replace the translation's on this node.
    internal: &'a mut Desired<A>,
    frontends: &'a mut Desired<A>,
    /// Other Services' north-south frontends: their addresses are taken.
    claimed: &'a Desired<A>,
    /// loadBalancerSourceRanges of the frontends that enforce them.
    source_ranges: &'a mut BTreeMap<FrontendAddr<A>, Vec<Cidr>>,
    problems: &'a mut BTreeSet<String>,
    refused: &'a mut BTreeSet<FrontendAddr<A>>,
}

/// The north-south frontends of Service `svc` (model `m`) in the family of
/// `cluster_ip`: NodePorts on each node address, external IPs and
/// LoadBalancer ingress IPs, with the backends of the ClusterIP frontend
/// of each port (narrowed by `topology`, or to this node's with
/// `externalTrafficPolicy: Local`). This node's ready endpoints go into
/// `local_ready`.
fn north_south<A: IpFamily>(
    svc: &ServiceRef,
    m: &ServiceModel,
    cluster_ip: A,
    topology: &BTreeMap<FrontendAddr<A>, Vec<Backend<A>>>,
    node: &NodeInfo,
    out: &mut FamilyPlan<'_, A>,
    local_ready: &mut BTreeSet<IpAddr>,
) {
    let is_local = |b: &&Backend<A>| node.node_name.is_some() && b.node_name.as_deref() == node.node_name.as_deref();
    let local = m.external_traffic_policy == TrafficPolicy::Local;
    let base_flags = m.flags & INHERITED;
    let is_lb = m.service_type == ServiceType::LoadBalancer;
    let has_node_ports = m.service_type.has_node_ports();
    // Most Services are ClusterIP only: nothing to do here.
    if !has_node_ports && m.external_ips.is_empty() {
        return;
    }
    // Ranges of the other family only do not restrict this one's
    // clients, as kube-proxy (one proxier per family) does.
    let family_ranges = m.source_ranges.iter().any(|c| A::of(c.addr).is_some());
    let desired = out.desired;
    for port in &m.ports {
        let cluster = FrontendAddr::new(cluster_ip, port.port, port.proto);
        // The ClusterIP frontend carries the Service's backends; without
        // it (e.g. its address was taken) there is nothing to serve.
        let Some(fe) = desired.get(&cluster) else { continue };
        local_ready.extend(fe.backends.iter().filter(is_local).filter(|b| !b.terminating).map(|b| b.addr.ip.into()));
        let cluster_backends = topology.get(&cluster).unwrap_or(&fe.backends);
        let backends: Vec<Backend<A>> =
            if local { fe.backends.iter().filter(is_local).cloned().collect() } else { cluster_backends.clone() };
        // Clients inside the cluster (pods, the host) of a Local Service's
        // external addresses get every endpoint, as kube-proxy's
        // short-circuit to the cluster chain gives them: a second entry,
        // where it differs (see `SCOPE_INTERNAL`).
        let in_cluster = (local && backends != *cluster_backends).then_some(cluster_backends);
        // Local without a local endpoint drops (the load balancer's health
        // check takes the node out), but a Service with no endpoint
        // anywhere rejects, as kube-proxy does: the datapath tells the two
        // apart by EXT_LOCAL.
        let base_flags = if fe.slot_backends().next().is_none() { base_flags & !svc_flags::EXT_LOCAL } else { base_flags };
        let add = |ip: A, fport: u16, kind: u32, ranges: bool, out: &mut FamilyPlan<'_, A>| {
            let addr = FrontendAddr::new(ip, fport, port.proto);
            if let Some(other) = desired.get(&addr).or_else(|| out.frontends.get(&addr)).or_else(|| out.claimed.get(&addr)) {
                out.problems.insert(format!("Service {svc}: frontend {addr} already belongs to {}, skipped", other.name));
                out.refused.insert(addr);
                return;
            }
            let mut flags = base_flags | kind;
            if ranges {
                flags |= svc_flags::SOURCE_RANGES;
                out.source_ranges.insert(addr, m.source_ranges.clone());
            }
            if let Some(all) = in_cluster {
                flags |= svc_flags::HAS_INTERNAL;
                let inner = addr.internal();
                let mut inner_flags = (base_flags & !svc_flags::EXT_LOCAL) | kind;
                // The ranges bind clients inside the cluster too, as
                // kube-proxy's firewall chains do.
                if ranges {
                    inner_flags |= svc_flags::SOURCE_RANGES;
                    out.source_ranges.insert(inner, m.source_ranges.clone());
                }
                let (name, affinity_timeout) = (fe.name.clone(), fe.affinity_timeout);
                out.frontends.insert(inner, Frontend { addr: inner, name, backends: all.clone(), flags: inner_flags, affinity_timeout });
            }
            out.frontends.insert(
                addr,
                Frontend { addr, name: fe.name.clone(), backends: backends.clone(), flags, affinity_timeout: fe.affinity_timeout },
            );
        };
        if let Some(np) = port.node_port.filter(|_| has_node_ports) {
            if node.nodeport_range.contains(np) {
                for ip in out.node_ips {
                    add(*ip, np, svc_flags::NODE_PORT, false, out);
                }
            } else {
                out.problems
                    .insert(format!("Service {svc}: nodePort {np} is outside the NodePort range {}, not served", node.nodeport_range));
            }
        }
        for ip in m.external_ips.iter().filter_map(|ip| A::of(*ip)) {
            add(ip, port.port, svc_flags::EXTERNAL_IP, false, out);
        }
        if is_lb {
            for ip in m.load_balancer_ips.iter().filter_map(|ip| A::of(*ip)) {
                add(ip, port.port, svc_flags::LOAD_BALANCER, family_ranges, out);
            }
        }
    }
}

/// Names the north-south addresses of `svc` that [`plan`] does not serve
/// (each one a problem, so counted as skipped): an external or
/// LoadBalancer IP of a family the Service has no ClusterIP of (its
/// endpoints are of the other family). A headless Service has no frontend
/// at all: nothing to say.
fn report_unserved(svc: &ServiceRef, m: &ServiceModel, problems: &mut BTreeSet<String>) {
    if m.cluster_ips.is_empty() {
        return;
    }
    let has = |v4: bool| m.cluster_ips.iter().any(|ip| ip.is_ipv4() == v4);
    let why =
        |ip: &IpAddr| (!has(ip.is_ipv4())).then(|| format!("the Service has no {} ClusterIP", if ip.is_ipv4() { "IPv4" } else { "IPv6" }));
    for ip in &m.external_ips {
        if let Some(why) = why(ip) {
            problems.insert(format!("Service {svc}: external IP {ip} is not served: {why}"));
        }
    }
    if m.service_type == ServiceType::LoadBalancer {
        for ip in &m.load_balancer_ips {
            if let Some(why) = why(ip) {
                problems.insert(format!("Service {svc}: LoadBalancer IP {ip} is not served: {why}"));
            }
        }
    }
}

/// North-south settings of `lb-agent run`.
#[derive(Clone, Debug)]
pub struct NorthSouthConfig {
    /// The node's name (endpoints' `nodeName`).
    pub node_name: Option<String>,
    /// Interfaces for the XDP program; empty: those of the default routes.
    pub external_ifaces: Vec<String>,
    /// The node's primary IPv4 addresses (`--node-ips`); empty: the IPv4
    /// addresses of the external interfaces. NodePorts are served on them
    /// unless `nodeport_addresses` says otherwise.
    pub node_ips: Vec<Ipv4Addr>,
    /// The same for IPv6 (the IPv6 `--node-ips`); empty: the global IPv6
    /// addresses of the external interfaces.
    pub node_ips6: Vec<Ipv6Addr>,
    /// `--nodeport-addresses`: which node addresses NodePorts are served
    /// on (see [`nodeport_addresses`]); empty: the node addresses.
    pub nodeport_addresses: Vec<NodePortAddress>,
    /// The address SNATed flows leave with; `None`: the first node address.
    pub snat_ip: Option<Ipv4Addr>,
    /// The address SNATed IPv6 flows leave with (NAT66); `None`: the first
    /// global IPv6 address of the external interfaces.
    pub snat_ip6: Option<Ipv6Addr>,
    /// `--affinity-ipv6-prefix`: the IPv6 client prefix session affinity
    /// keys a client by (`LB6_NODE`, beside the IPv6 SNAT address; it
    /// applies to every IPv6 frontend, tc's too).
    pub affinity_ipv6_prefix: u8,
    pub nodeport_range: PortRange,
    pub snat_ports: PortRange,
    /// How to attach the XDP program (`Off`: not at all).
    pub xdp_mode: XdpAttach,
    /// Where the node's network sysctls are set (`--sysctl-dir`):
    /// accept_local on the external interfaces, loose reverse-path
    /// filtering on overlay devices.
    pub sysctls: Sysctls,
}

impl Default for NorthSouthConfig {
    fn default() -> Self {
        NorthSouthConfig {
            node_name: None,
            external_ifaces: Vec::new(),
            node_ips: Vec::new(),
            node_ips6: Vec::new(),
            nodeport_addresses: Vec::new(),
            snat_ip: None,
            snat_ip6: None,
            affinity_ipv6_prefix: 128,
            nodeport_range: DEFAULT_NODEPORT_RANGE,
            snat_ports: DEFAULT_SNAT_PORTS,
            xdp_mode: XdpAttach::Auto,
            sysctls: Sysctls::default(),
        }
    }
}

/// The north-south side of a running agent.
pub struct NorthSouth {
    node: NodeInfo,
    health: HealthChecks,
    logged: BTreeSet<String>,
    /// The external interfaces, whose addresses are the node addresses.
    ifaces: Vec<String>,
    /// `--node-ips` and the Node's addresses, per family.
    addrs4: FamilyAddresses<Ipv4Addr>,
    addrs6: FamilyAddresses<Ipv6Addr>,
    /// `--nodeport-addresses`.
    nodeport_filter: Vec<NodePortAddress>,
    configured_snat: Option<Ipv4Addr>,
    /// The SNAT address in `LB_NODE`.
    snat: Option<Ipv4Addr>,
    /// What `LB_NODE` holds.
    node_config: NodeConfig,
    configured_snat6: Option<Ipv6Addr>,
    /// The IPv6 SNAT address in `LB6_NODE`.
    snat6: Option<Ipv6Addr>,
    /// The IPv6 affinity prefix in `LB6_NODE`.
    affinity_prefix6: u8,
}

/// The node addresses of one family: the configured ones (`--node-ips`
/// of the family), or else the family's addresses of the external
/// interfaces (`addrs`: interface, address; for IPv6 the global ones), in
/// interface order.
pub fn node_addresses<A: IpFamily>(configured: &[A], ifaces: &[String], addrs: &[(String, A)]) -> Vec<A> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    let mut out = Vec::new();
    for name in ifaces {
        for (_, a) in addrs.iter().filter(|(n, _)| n == name) {
            if !out.contains(a) {
                out.push(*a);
            }
        }
    }
    out
}

/// The addresses of one family NodePorts are served on. Without
/// `--nodeport-addresses` (`filter` empty), the node addresses
/// (`node_ips`, see [`node_addresses`]). With it, as kube-proxy: every
/// address of the family of the node (`addrs`: interface, address, in the
/// kernel's order) inside one of its CIDRs of the family, or, for
/// `primary`, one of the node's `primary` addresses of the family. A
/// filter with nothing for the family (IPv4 CIDRs only, say) takes all of
/// the family's addresses, as kube-proxy's `NewNodePortAddresses` adds
/// `0.0.0.0/0` or `::/0` for a family none of its CIDRs are of.
/// Loopback addresses never serve NodePorts.
pub fn nodeport_addresses<A: IpFamily>(filter: &[NodePortAddress], node_ips: &[A], addrs: &[(String, A)], primary: &[A]) -> Vec<A> {
    if filter.is_empty() {
        return node_ips.to_vec();
    }
    let for_family = |f: &NodePortAddress| match f {
        NodePortAddress::Primary => true,
        NodePortAddress::Cidr(c) => A::of(c.addr).is_some(),
    };
    let all = !filter.iter().any(for_family);
    let wanted = |a: A| {
        all || filter.iter().any(|f| match f {
            NodePortAddress::Primary => primary.contains(&a),
            NodePortAddress::Cidr(c) => c.contains(a.into()),
        })
    };
    let mut out = Vec::new();
    for (_, a) in addrs {
        let ip: IpAddr = (*a).into();
        if !ip.is_loopback() && wanted(*a) && !out.contains(a) {
            out.push(*a);
        }
    }
    out
}

/// The node's primary addresses of one family (`--nodeport-addresses
/// primary`): `--node-ips` of the family; else its Node's addresses of
/// the family (`InternalIP`, else `ExternalIP`); else the first node
/// address (for IPv4 the one SNATed flows leave with by default).
pub fn primary_addresses<A: IpFamily>(configured: &[A], node_internal: &[A], node_ips: &[A]) -> Vec<A> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    if !node_internal.is_empty() {
        return node_internal.to_vec();
    }
    node_ips.first().copied().into_iter().collect()
}

/// One family's node-address settings.
#[derive(Clone, Debug)]
struct FamilyAddresses<A> {
    /// `--node-ips` of the family: when set, the node addresses do not
    /// follow the interfaces.
    configured: Vec<A>,
    /// The Node's addresses of the family (see [`primary_addresses`]),
    /// once its Node was seen.
    node_primary: Vec<A>,
}

impl<A: IpFamily> FamilyAddresses<A> {
    /// The node addresses and the NodePort addresses of the family, from
    /// the node's addresses `addrs`.
    fn plan(&self, filter: &[NodePortAddress], ifaces: &[String], addrs: &[(String, A)]) -> (Vec<A>, Vec<A>) {
        let base = node_addresses(&self.configured, ifaces, addrs);
        let primary = primary_addresses(&self.configured, &self.node_primary, &base);
        let node_ips = nodeport_addresses(filter, &base, addrs, &primary);
        (base, node_ips)
    }

    /// Whether the addresses are fixed (configured, no filter): they do
    /// not follow the interfaces.
    fn fixed(&self, filter: &[NodePortAddress]) -> bool {
        !self.configured.is_empty() && filter.is_empty()
    }
}

/// The address SNATed flows leave with: the configured one; else the
/// current one while it is still a node address (flows keep working);
/// else the first node address; else (no address left) the current one.
/// The same rule for both families: IPv6's node addresses are the global
/// IPv6 addresses of the external interfaces.
pub fn snat_address<A: Copy + PartialEq>(configured: Option<A>, current: Option<A>, node_ips: &[A]) -> Option<A> {
    configured.or(current.filter(|c| node_ips.contains(c))).or_else(|| node_ips.first().copied()).or(current)
}

/// What `LB6_NODE` holds for IPv6 SNAT address `snat6` (`::`: none) and
/// IPv6 affinity prefix `affinity_prefix`.
pub fn node6_config(snat6: Option<Ipv6Addr>, affinity_prefix: u8) -> Node6Config {
    Node6Config {
        snat_addr: addr6(snat6.unwrap_or(Ipv6Addr::UNSPECIFIED)),
        affinity_host_bits: Node6Config::affinity_host_bits_for(affinity_prefix as u32),
    }
}

/// Node addresses that came and went.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AddressChange {
    pub added: Vec<Ipv4Addr>,
    pub removed: Vec<Ipv4Addr>,
}

impl AddressChange {
    pub fn between(old: &[Ipv4Addr], new: &[Ipv4Addr]) -> AddressChange {
        AddressChange {
            added: new.iter().filter(|a| !old.contains(a)).copied().collect(),
            removed: old.iter().filter(|a| !new.contains(a)).copied().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl NorthSouth {
    /// Finds the external interfaces and node addresses, attaches the XDP
    /// program and writes this node's settings. With no external interface
    /// (configured or found through a default route) north-south traffic
    /// is not served from XDP, but NodePorts still work from pods and the
    /// host on the configured node addresses.
    pub fn start(
        cfg: &NorthSouthConfig,
        dp: &mut Datapath,
        reconciler: &mut Reconciler,
        heartbeat: Heartbeat,
    ) -> anyhow::Result<NorthSouth> {
        let ifaces =
            if cfg.external_ifaces.is_empty() { default_route_interfaces().unwrap_or_default() } else { cfg.external_ifaces.clone() };
        let addrs = interface_addresses().context("listing the node's addresses")?;
        let addrs4 = FamilyAddresses { configured: cfg.node_ips.clone(), node_primary: Vec::new() };
        let addrs6 = FamilyAddresses { configured: cfg.node_ips6.clone(), node_primary: Vec::new() };
        let (base, node_ips) = addrs4.plan(&cfg.nodeport_addresses, &ifaces, &addrs);
        let (base6, node_ips6) = addrs6.plan(&cfg.nodeport_addresses, &ifaces, &interface_addresses6().unwrap_or_default());
        let snat6 = snat_address(cfg.snat_ip6, None, &base6);
        let snat = snat_address(cfg.snat_ip, None, &base);
        if !cfg.nodeport_addresses.is_empty() && node_ips.is_empty() {
            warn!(nodeport_addresses = ?cfg.nodeport_addresses, "no node address matches --nodeport-addresses: no NodePort is served");
        }
        let maps = reconciler.maps_mut();
        let xdp = cfg.xdp_mode != XdpAttach::Off;
        if xdp && ifaces.is_empty() {
            warn!(
                "no external interface (no --external-ifaces and no default route): NodePorts, external and LoadBalancer IPs are not served from outside"
            );
        }
        if xdp {
            for name in &ifaces {
                let (mode, why) = dp.attach_xdp(name, cfg.xdp_mode)?;
                // A packet XDP hands to the kernel after translating it may
                // carry the node's own address as its source (a reply of a
                // SNATed flow whose next hop has no neighbour entry yet):
                // without accept_local the kernel drops it as martian.
                cfg.sysctls.ensure_accept_local(name);
                let ifindex = ifindex(name)?;
                let mut dev = Device { mode, name: [0; IFNAME_LEN], why };
                let n = name.len().min(IFNAME_LEN - 1);
                dev.name[..n].copy_from_slice(&name.as_bytes()[..n]);
                maps.devices.insert(&ifindex, &dev)?;
            }
            // Other nodes' SNATed NodePort flows through the pod overlay.
            cfg.sysctls.loosen_rp_filter_on_overlays();
            // Forget interfaces of an earlier run that are not ours now.
            let ours: BTreeSet<u32> = ifaces.iter().filter_map(|n| ifindex(n).ok()).collect();
            for (idx, _) in maps.devices.entries()? {
                if !ours.contains(&idx) {
                    maps.devices.remove(&idx)?;
                }
            }
        }
        if let Some((min, max)) = cfg.sysctls.ephemeral_ports()
            && let Some(w) = snat_ports_warning(cfg.snat_ports, PortRange { min, max })
        {
            warn!("{w}");
        }
        let node_config = NodeConfig {
            snat_addr: snat.map_or(0, |a| u32::from_ne_bytes(a.octets())),
            nat_port_min: cfg.snat_ports.min,
            nat_port_max: cfg.snat_ports.max,
            flags: node_flags::READY,
            nodeport_min: cfg.nodeport_range.min,
            nodeport_max: cfg.nodeport_range.max,
        };
        maps.write_node(&node_config)?;
        maps.write_node6(&node6_config(snat6, cfg.affinity_ipv6_prefix))?;
        reconciler.set_node_name(cfg.node_name.clone());
        info!(
            interfaces = ?ifaces,
            node_ips = ?node_ips,
            node_ips6 = ?node_ips6,
            nodeport_addresses = ?cfg.nodeport_addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
            snat = ?snat,
            snat6 = ?snat6,
            nodeport_range = %cfg.nodeport_range,
            snat_ports = %cfg.snat_ports,
            node = cfg.node_name.as_deref().unwrap_or("(unknown: no endpoint is local)"),
            "north-south: {}",
            if dp.xdp_interfaces().next().is_some() {
                dp.xdp_interfaces()
                    .map(|(n, m, w)| match m {
                        lb_common::xdp_mode::TC => format!("{n}: tc ({})", xdp_why_text(w)),
                        _ => format!("{n}: XDP {} ({})", xdp_mode_name(m), xdp_why_text(w)),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                "no XDP".to_string()
            }
        );
        Ok(NorthSouth {
            node: NodeInfo { node_name: cfg.node_name.clone(), node_ips, node_ips6, nodeport_range: cfg.nodeport_range, zone: None },
            health: HealthChecks::new(heartbeat),
            logged: BTreeSet::new(),
            ifaces,
            addrs4,
            addrs6,
            nodeport_filter: cfg.nodeport_addresses.clone(),
            configured_snat: cfg.snat_ip,
            snat,
            node_config,
            configured_snat6: cfg.snat_ip6,
            snat6,
            affinity_prefix6: cfg.affinity_ipv6_prefix,
        })
    }

    /// Reads the node's addresses again (after an address event, or now
    /// and then): when the NodePort addresses changed, logs what changed
    /// and returns true: the NodePort frontends need a re-plan. Moves the
    /// SNAT address if it is gone (or there was none). Configured
    /// `--node-ips` do not follow the interfaces (but addresses chosen by
    /// `--nodeport-addresses` do).
    pub fn refresh_addresses(&mut self, reconciler: &mut Reconciler) -> bool {
        let changed6 = self.refresh_addresses6(reconciler);
        if self.addrs4.fixed(&self.nodeport_filter) {
            return changed6;
        }
        let addrs = match interface_addresses() {
            Ok(a) => a,
            Err(e) => {
                warn!("listing the node's addresses: {e} (NodePorts stay on {:?})", self.node.node_ips);
                return changed6;
            }
        };
        let (base, node_ips) = self.addrs4.plan(&self.nodeport_filter, &self.ifaces, &addrs);
        let snat = snat_address(self.configured_snat, self.snat, &base);
        if snat != self.snat {
            let config = NodeConfig { snat_addr: snat.map_or(0, |a| u32::from_ne_bytes(a.octets())), ..self.node_config };
            match reconciler.maps_mut().write_node(&config) {
                Ok(()) => {
                    info!(old = ?self.snat, new = ?snat, "SNAT address moved (flows already SNATed keep theirs)");
                    self.snat = snat;
                    self.node_config = config;
                }
                Err(e) => warn!("writing the new SNAT address {snat:?}: {e:#} (SNAT stays {:?})", self.snat),
            }
        }
        let change = AddressChange::between(&self.node.node_ips, &node_ips);
        if change.is_empty() {
            return changed6;
        }
        info!(
            added = ?change.added,
            removed = ?change.removed,
            node_ips = ?node_ips,
            snat = ?self.snat,
            "the node's addresses changed: NodePorts follow"
        );
        if node_ips.is_empty() {
            warn!(interfaces = ?self.ifaces, nodeport_addresses = ?self.nodeport_filter, "no NodePort address left: no NodePort is served");
        }
        self.node.node_ips = node_ips;
        true
    }

    /// Reads the node's IPv6 addresses again: true (logged) when the IPv6
    /// NodePort addresses changed. Moves the IPv6 SNAT address as IPv4's.
    fn refresh_addresses6(&mut self, reconciler: &mut Reconciler) -> bool {
        if self.addrs6.fixed(&self.nodeport_filter) {
            return false;
        }
        let addrs6 = match interface_addresses6() {
            Ok(a) => a,
            Err(e) => {
                warn!("listing the node's IPv6 addresses: {e} (IPv6 NodePorts stay on {:?})", self.node.node_ips6);
                return false;
            }
        };
        let (base6, node_ips6) = self.addrs6.plan(&self.nodeport_filter, &self.ifaces, &addrs6);
        let snat6 = snat_address(self.configured_snat6, self.snat6, &base6);
        if snat6 != self.snat6 {
            match reconciler.maps_mut().write_node6(&node6_config(snat6, self.affinity_prefix6)) {
                Ok(()) => {
                    info!(old = ?self.snat6, new = ?snat6, "IPv6 SNAT address moved (flows already SNATed keep theirs)");
                    self.snat6 = snat6;
                }
                Err(e) => warn!("writing the new IPv6 SNAT address {snat6:?}: {e:#} (it stays {:?})", self.snat6),
            }
        }
        if node_ips6 == self.node.node_ips6 {
            return false;
        }
        info!(old = ?self.node.node_ips6, new = ?node_ips6, "the node's IPv6 addresses changed: IPv6 NodePorts follow");
        self.node.node_ips6 = node_ips6;
        true
    }

    /// Takes the Node's addresses of both families (`InternalIP`, else
    /// `ExternalIP`, per family: the primary addresses of a family whose
    /// `--node-ips` are not given); true when the NodePort addresses
    /// changed with them (`--nodeport-addresses primary`).
    pub fn set_node_primary(&mut self, ips: &[IpAddr], reconciler: &mut Reconciler) -> bool {
        let v4: Vec<Ipv4Addr> = ips.iter().filter_map(|ip| Ipv4Addr::of(*ip)).collect();
        let v6: Vec<Ipv6Addr> = ips.iter().filter_map(|ip| Ipv6Addr::of(*ip)).collect();
        if self.addrs4.node_primary == v4 && self.addrs6.node_primary == v6 {
            return false;
        }
        info!(node_ips = ?ips, "this node's addresses (its Node)");
        self.addrs4.node_primary = v4;
        self.addrs6.node_primary = v6;
        self.nodeport_filter.contains(&NodePortAddress::Primary) && self.refresh_addresses(reconciler)
    }

    /// What planning needs to know about this node.
    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Sets this node's zone (from its Node's labels); logged when it
    /// changes.
    pub fn set_zone(&mut self, zone: Option<&str>) {
        if self.node.zone.as_deref() != zone {
            info!(zone = zone.unwrap_or("(none)"), "this node's zone (topology.kubernetes.io/zone)");
            self.node.zone = zone.map(String::from);
        }
    }

    /// Logs each problem of `plan` once (a Service that stays broken is not
    /// logged at every sync); returns how many frontends were skipped.
    pub fn log_problems(&mut self, plan: &Plan) -> usize {
        for p in &plan.problems {
            if self.logged.insert(p.clone()) {
                warn!("{p}");
            }
        }
        plan.problems.len()
    }

    /// Brings the health check NodePort servers in step with `plan`.
    pub fn sync_health_checks(&mut self, plan: &Plan) {
        self.health.sync(&plan.health_checks);
    }
}

#[cfg(test)]
mod tests;
