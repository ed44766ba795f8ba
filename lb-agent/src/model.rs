//! The desired datapath state: what the maps should hold, independent of
//! IDs and generations.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use lb_common::{IPPROTO_TCP, IPPROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL, Service4Key};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// Which clients a frontend entry serves (`Service4Key::scope`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every client, unless an [`Scope::Internal`] entry at the same
    /// address serves those inside the cluster.
    #[default]
    External,
    /// Clients inside the cluster (pods, the host) only: the second entry
    /// of an `externalTrafficPolicy: Local` Service's external address.
    Internal,
}

/// An address family of the model: `Ipv4Addr` or `Ipv6Addr`. Frontends,
/// backends and the desired state are generic over it (IPv4 by default),
/// so translation and listing are written once for both.
pub trait IpFamily: Copy + fmt::Debug + fmt::Display + Eq + Hash + Ord + Into<IpAddr> + Send + Sync + 'static {
    /// The family's name in `spec.ipFamilies` and in an EndpointSlice's
    /// `addressType`.
    const NAME: &'static str;

    /// `ip` if it is of this family.
    fn of(ip: IpAddr) -> Option<Self>;
}

impl IpFamily for Ipv4Addr {
    const NAME: &'static str = "IPv4";

    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
}

impl IpFamily for Ipv6Addr {
    const NAME: &'static str = "IPv6";

    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }
}

/// A frontend address: what clients dial, and which of them the entry
/// serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendAddr<A = Ipv4Addr> {
    pub ip: A,
    pub port: u16,
    pub proto: Protocol,
    pub scope: Scope,
}

impl<A> FrontendAddr<A> {
    /// The (usual) entry that serves every client.
    pub fn new(ip: A, port: u16, proto: Protocol) -> FrontendAddr<A> {
        FrontendAddr { ip, port, proto, scope: Scope::External }
    }

    /// The entry at the same address for clients inside the cluster.
    pub fn internal(self) -> FrontendAddr<A> {
        FrontendAddr { scope: Scope::Internal, ..self }
    }
}

impl FrontendAddr {
    pub fn key(&self) -> Service4Key {
        Service4Key {
            addr: u32::from_ne_bytes(self.ip.octets()),
            port: self.port.to_be(),
            proto: self.proto.number(),
            scope: match self.scope {
                Scope::External => SCOPE_EXTERNAL,
                Scope::Internal => SCOPE_INTERNAL,
            },
        }
    }

    /// The address of a map key; `None` for a protocol or scope this agent
    /// does not write.
    pub fn from_key(key: &Service4Key) -> Option<Self> {
        let scope = match key.scope {
            SCOPE_EXTERNAL => Scope::External,
            SCOPE_INTERNAL => Scope::Internal,
            _ => return None,
        };
        Some(FrontendAddr {
            ip: Ipv4Addr::from(key.addr.to_ne_bytes()),
            port: u16::from_be(key.port),
            proto: Protocol::from_number(key.proto)?,
            scope,
        })
    }

    /// `ip:port/PROTO`, without the scope.
    pub fn address(&self) -> String {
        format!("{}:{}/{}", self.ip, self.port, self.proto)
    }
}

/// `10.96.0.10:53/UDP`, `[fd00:96::a]:53/UDP`.
impl<A: IpFamily> fmt::Display for FrontendAddr<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", SocketAddr::new(self.ip.into(), self.port), self.proto)?;
        if self.scope == Scope::Internal {
            f.write_str(" (in-cluster clients)")?;
        }
        Ok(())
    }
}

/// A backend as the datapath sees it: one endpoint address and target port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr<A = Ipv4Addr> {
    pub ip: A,
    pub port: u16,
    pub proto: Protocol,
}

/// `10.244.0.11:8080`, `[fd00:244::11]:8080`.
impl<A: IpFamily> fmt::Display for BackendAddr<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", SocketAddr::new(self.ip.into(), self.port))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend<A = Ipv4Addr> {
    pub addr: BackendAddr<A>,
    /// Serving but terminating (KEP-1669); used only when nothing is ready.
    pub terminating: bool,
    /// The endpoint's `nodeName`, for the traffic policies (shared, as
    /// every copy of it: [`crate::source::shared`]).
    pub node_name: Option<Arc<str>>,
    /// The endpoint's `zone`, for topology-aware routing (shared).
    pub zone: Option<Arc<str>>,
    /// The endpoint's topology hints (`hints.forZones`, `hints.forNodes`),
    /// shared by every frontend of the Service.
    pub hints: Option<Arc<Hints>>,
}

impl<A> Backend<A> {
    /// A ready backend with no node or zone.
    pub fn ready(addr: BackendAddr<A>) -> Backend<A> {
        Backend { addr, terminating: false, node_name: None, zone: None, hints: None }
    }
}

/// An endpoint's topology hints, as the EndpointSlice controller writes
/// them from `trafficDistribution` (or the topology-mode annotation).
/// An empty list means no hint of that kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Hints {
    /// `hints.forZones[].name`.
    pub zones: Vec<String>,
    /// `hints.forNodes[].name`.
    pub nodes: Vec<String>,
}

/// One frontend of a Service with the backends that serve it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frontend<A = Ipv4Addr> {
    pub addr: FrontendAddr<A>,
    /// `namespace/name:port` for listings and logs.
    pub name: String,
    /// Every serving endpoint, ready ones first, each group in a stable
    /// order. Terminating ones are kept so established flows to them keep
    /// working; [`Frontend::slot_backends`] says which take new flows.
    pub backends: Vec<Backend<A>>,
    /// `lb_common::svc_flags::*`.
    pub flags: u32,
    pub affinity_timeout: u32,
}

/// Everything the maps should hold, keyed by frontend (of one family).
pub type Desired<A = Ipv4Addr> = BTreeMap<FrontendAddr<A>, Frontend<A>>;

/// The frontends a desired state kept in several maps asks for, a later
/// map's replacing an earlier one's at the same address (as
/// `Reconciler::apply_all` takes them).
pub fn merged<A: IpFamily>(parts: &[&Desired<A>]) -> Desired<A> {
    parts.iter().flat_map(|d| d.iter()).map(|(a, f)| (*a, f.clone())).collect()
}

/// The addresses where two desired states want different frontends (or
/// only one wants any): what a reconciler told what changed must be told.
pub fn differing<A: IpFamily>(a: &Desired<A>, b: &Desired<A>) -> BTreeSet<FrontendAddr<A>> {
    a.keys().chain(b.keys()).filter(|k| a.get(k) != b.get(k)).copied().collect()
}

impl<A> Frontend<A> {
    /// The backends that take new connections: the ready ones, or, when
    /// none is ready, the serving-but-terminating ones (KEP-1669). Empty
    /// means the frontend rejects.
    pub fn slot_backends(&self) -> impl Iterator<Item = &Backend<A>> {
        let any_ready = self.backends.iter().any(|b| !b.terminating);
        self.backends.iter().filter(move |b| b.terminating != any_ready)
    }
}

/// A Service, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How a frontend picks a backend for a new flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendSelection {
    #[default]
    Random,
    Maglev,
}

impl FromStr for BackendSelection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "random" => Ok(BackendSelection::Random),
            "maglev" => Ok(BackendSelection::Maglev),
            other => Err(format!("{other:?} is not a backend selection (random or maglev)")),
        }
    }
}

impl fmt::Display for BackendSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendSelection::Random => "random",
            BackendSelection::Maglev => "maglev",
        })
    }
}

/// An address block, as in `loadBalancerSourceRanges`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, len) = s.trim().split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR (address/length)"))?;
        let addr: IpAddr = ip.parse().map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len: u8 =
            len.parse().ok().filter(|l| *l <= max).ok_or_else(|| format!("{s:?}: prefix length {len:?} is not in 0-{max}"))?;
        Ok(Cidr { addr, prefix_len })
    }
}

impl Cidr {
    /// Whether `ip` is inside this block (never for an IPv6 block).
    pub fn contains_v4(&self, ip: Ipv4Addr) -> bool {
        let IpAddr::V4(net) = self.addr else {
            return false;
        };
        let mask = u32::MAX.checked_shl(32 - self.prefix_len as u32).unwrap_or(0);
        u32::from(ip) & mask == u32::from(net) & mask
    }

    /// Whether `ip` is inside this block (never for one of the other
    /// family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.contains_v4(a),
            IpAddr::V6(a) => self.contains_v6(a),
        }
    }

    /// Whether `ip` is inside this block (never for an IPv4 block).
    pub fn contains_v6(&self, ip: Ipv6Addr) -> bool {
        let IpAddr::V6(net) = self.addr else {
            return false;
        };
        let mask = u128::MAX.checked_shl(128 - self.prefix_len as u32).unwrap_or(0);
        u128::from(ip) & mask == u128::from(net) & mask
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A traffic policy (`externalTrafficPolicy`, `internalTrafficPolicy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// One ServicePort as validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortModel {
    pub name: Option<String>,
    pub proto: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// `spec.type` of a Service lb serves (`ExternalName` Services are not
/// ours).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    ClusterIp,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    /// The type named by `spec.type` (`None`: not one lb serves).
    pub fn parse(s: &str) -> Option<ServiceType> {
        match s {
            "ClusterIP" => Some(ServiceType::ClusterIp),
            "NodePort" => Some(ServiceType::NodePort),
            "LoadBalancer" => Some(ServiceType::LoadBalancer),
            _ => None,
        }
    }

    /// Whether the Service has NodePorts (LoadBalancer Services do too).
    pub fn has_node_ports(self) -> bool {
        matches!(self, ServiceType::NodePort | ServiceType::LoadBalancer)
    }
}

/// Everything lb knows about a Service beyond its ClusterIP frontends:
/// carried for the north-south, traffic-policy and affinity work even
/// where the datapath does not use it yet. Invalid entries are left out
/// (and reported); what is here is valid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceModel {
    /// `spec.type` (`ClusterIP` when absent).
    pub service_type: ServiceType,
    /// Every valid ClusterIP, both families.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ipFamilies` (`IPv4`, `IPv6`).
    pub ip_families: Vec<String>,
    /// `spec.ipFamilyPolicy`.
    pub ip_family_policy: Option<String>,
    /// The usable ports (TCP and UDP) with their NodePorts.
    pub ports: Vec<PortModel>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    pub source_ranges: Vec<Cidr>,
    pub health_check_node_port: Option<u16>,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.trafficDistribution` when it is one of the known values. As in
    /// kube-proxy, what it changes comes through the EndpointSlice hints.
    pub traffic_distribution: Option<String>,
    /// `sessionAffinity: ClientIP` timeout in seconds; `None` without
    /// affinity.
    pub affinity_timeout: Option<u32>,
    pub backend_selection: BackendSelection,
    /// The `svc_flags` its frontends carry.
    pub flags: u32,
}
