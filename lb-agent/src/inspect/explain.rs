//! `lb-agent explain PROTO SRC:PORT DST:PORT`: what the datapath would do
//! with a packet, read from the pinned maps: which frontend it hits, a
//! conntrack hit or a new flow, the backend choice (affinity, Maglev slot,
//! random pick) or the reject or drop and its reason. It follows the
//! programs' decisions step by step (`lb-ebpf`'s `tc.rs`, `xdp.rs`,
//! `select.rs`); a test holds it to what the programs do with the same
//! packet through BPF_PROG_TEST_RUN. It reads only: the packet is not
//! recorded anywhere. One walk, written over the family ([`Explained`]:
//! a `MapFamily` with the few decisions that differ: IPv6 from outside
//! (`lb_xdp6`) passes a flow to a backend on another node when the node
//! has no IPv6 SNAT address).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aya::maps::lpm_trie::Key as LpmKey;
use lb_common::{
    Addr6, Affinity4Key, CT_SERVICE, Config, CtKeyOf, IPPROTO_TCP, NodeConfig, RevNatKey, SCOPE_EXTERNAL, SCOPE_INTERNAL, Service4Value,
    SlotKey, SrcRangeOf, config_flags, ct, ct_flags, hairpin_addr,
    hash::{affinity_client6_prefix, flow_hash, flow_hash6},
    node_flags, stat, svc_flags, vip_flags,
};
use serde::Serialize;

use super::conntrack::ct_endpoint;
use crate::{
    maps::{Maps, MapsError, svc_name_str},
    reconcile::{CtKey, CtValue, MapFamily},
};

/// What the datapath decides differently by family (`lb-ebpf`'s `l3.rs`).
pub trait Explained: MapFamily {
    /// Whether a flow to a backend on another node passes untranslated
    /// when this node has no SNAT address of the family (IPv6,
    /// `pass_no_nat66`: DNAT alone would send the backend's replies
    /// straight to the client); IPv4 is then DNATed only.
    const PASSES_WITHOUT_SNAT: bool;
    /// The address `lb_xdp` SNATs this family's flows to backends on other
    /// nodes to (`LB_NODE`, `LB6_NODE`), if the node has one.
    fn snat_addr(maps: &Maps, node: Option<NodeConfig>) -> Option<IpAddr>;
    fn ct_get(maps: &Maps, key: &CtKey<Self>) -> Result<Option<CtValue<Self>>, MapsError>;
    fn flow_hash(saddr: Self::VipKey, daddr: Self::VipKey, sport: u16, dport: u16, proto: u8) -> u32;
    /// The session affinity key's client.
    fn affinity_client(maps: &Maps, addr: Self::VipKey) -> u64;
    /// Whether `addr` is the hairpin address (a pod's reply to itself).
    fn is_hairpin(addr: Self::VipKey) -> bool;
}

impl Explained for Ipv4Addr {
    const PASSES_WITHOUT_SNAT: bool = false;
    fn snat_addr(_maps: &Maps, node: Option<NodeConfig>) -> Option<IpAddr> {
        node.filter(|n| n.snat_addr != 0).map(|n| IpAddr::V4(Ipv4Addr::from(n.snat_addr.to_ne_bytes())))
    }
    fn ct_get(maps: &Maps, key: &CtKey<Self>) -> Result<Option<CtValue<Self>>, MapsError> {
        maps.ct.get(key)
    }
    fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
        flow_hash(saddr, daddr, sport, dport, proto)
    }
    fn affinity_client(_maps: &Maps, addr: u32) -> u64 {
        addr as u64
    }
    fn is_hairpin(addr: u32) -> bool {
        addr == hairpin_addr()
    }
}

impl Explained for Ipv6Addr {
    const PASSES_WITHOUT_SNAT: bool = true;
    fn snat_addr(maps: &Maps, node: Option<NodeConfig>) -> Option<IpAddr> {
        node?;
        let a = lb_common::ipv6(maps.read_node6().ok()?.snat_addr);
        (!a.is_unspecified()).then_some(IpAddr::V6(a))
    }
    fn ct_get(maps: &Maps, key: &CtKey<Self>) -> Result<Option<CtValue<Self>>, MapsError> {
        if key.proto == IPPROTO_TCP { &maps.v6.ct_tcp } else { &maps.v6.ct_any }.get(key)
    }
    fn flow_hash(saddr: Addr6, daddr: Addr6, sport: u16, dport: u16, proto: u8) -> u32 {
        flow_hash6(&saddr, &daddr, sport, dport, proto)
    }
    /// The client's prefix (`LB6_NODE`, `--affinity-ipv6-prefix`), as
    /// `lb-ebpf`'s `l3.rs`.
    fn affinity_client(maps: &Maps, addr: Addr6) -> u64 {
        let len = maps.read_node6().map_or(128, |n| n.affinity_prefix());
        affinity_client6_prefix(&addr, len)
    }
    fn is_hairpin(addr: Addr6) -> bool {
        addr == lb_common::hairpin_addr6()
    }
}

/// Where the packet meets the datapath.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// Leaving a pod: `lb_tc_ingress` on its interface.
    #[default]
    Pod,
    /// Arriving from outside the node: `lb_xdp` on an external interface.
    External,
}

/// The packet asked about.
#[derive(Clone, Copy, Debug)]
pub struct Query {
    pub hook: Hook,
    pub proto: u8,
    /// Of one family, IPv4 or IPv6.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TCP flags of the packet (`ct_flags`); a SYN by default.
    pub tcp_flags: u8,
}

/// What the datapath does with the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Not lb's: it goes on untouched.
    Pass,
    /// Translated to a backend.
    Translate,
    /// Answered with ICMP port unreachable (ECONNREFUSED for a socket).
    Reject,
    Drop,
}

/// How the backend was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// The flow's conntrack entry.
    Conntrack,
    /// The client's session affinity entry.
    Affinity,
    /// The frontend's Maglev table.
    Maglev,
    /// A random slot: any of `candidates`.
    Random,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub hook: Hook,
    pub verdict: Verdict,
    /// The counter (`lb-agent stats`) a reject or drop goes to.
    pub reason: Option<&'static str>,
    /// `ip:port/PROTO` of the frontend hit, with its ID and name.
    pub frontend: Option<String>,
    pub frontend_id: Option<u32>,
    pub service: Option<String>,
    pub selection: Option<Selection>,
    /// The backend `ip:port` (for a random pick: none, see `candidates`).
    pub backend: Option<String>,
    pub backend_id: Option<u32>,
    /// The Maglev slot (`hash % M`) when Maglev chose.
    pub maglev_slot: Option<u32>,
    /// Every backend a random pick can give.
    pub candidates: Vec<String>,
    /// The source the packet leaves with, when it is source-NATed.
    pub snat: Option<String>,
    /// Each decision, in order, in words.
    pub steps: Vec<String>,
}

impl Explanation {
    fn new(hook: Hook) -> Explanation {
        Explanation {
            hook,
            verdict: Verdict::Pass,
            reason: None,
            frontend: None,
            frontend_id: None,
            service: None,
            selection: None,
            backend: None,
            backend_id: None,
            maglev_slot: None,
            candidates: Vec::new(),
            snat: None,
            steps: Vec::new(),
        }
    }

    fn step(&mut self, s: impl Into<String>) {
        self.steps.push(s.into());
    }

    fn end(mut self, verdict: Verdict, reason: Option<u32>, why: impl Into<String>) -> Explanation {
        self.verdict = verdict;
        self.reason = reason.map(|r| stat::NAMES[r as usize]);
        self.step(why);
        self
    }
}

const NORTH_SOUTH: u32 = svc_flags::NODE_PORT | svc_flags::EXTERNAL_IP | svc_flags::LOAD_BALANCER;
const NORTH_SOUTH_VIP: u32 = vip_flags::NODE_PORT | vip_flags::EXTERNAL_IP | vip_flags::LOAD_BALANCER;

/// A packet of family `A`: its addresses as the maps store them, its
/// ports in network order.
struct Tuple<A: MapFamily> {
    saddr: A::VipKey,
    daddr: A::VipKey,
    sport: u16,
    dport: u16,
}

/// Explains `q` against the maps as of `now_ns` (CLOCK_MONOTONIC).
pub fn explain(maps: &Maps, q: &Query, now_ns: u64) -> Result<Explanation, MapsError> {
    match (q.src.ip(), q.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => explain_in::<Ipv4Addr>(maps, q, (s, d), now_ns),
        (IpAddr::V6(s), IpAddr::V6(d)) => explain_in::<Ipv6Addr>(maps, q, (s, d), now_ns),
        _ => Ok(Explanation::new(q.hook).end(Verdict::Pass, None, "source and destination are of different families: no such packet")),
    }
}

fn explain_in<A: Explained>(maps: &Maps, q: &Query, (src, dst): (A, A), now_ns: u64) -> Result<Explanation, MapsError> {
    let mut x = Explanation::new(q.hook);
    let t = Tuple::<A> { saddr: A::vip_key(src), daddr: A::vip_key(dst), sport: q.src.port().to_be(), dport: q.dst.port().to_be() };
    let (saddr, daddr, sport, dport) = (t.saddr, t.daddr, t.sport, t.dport);
    let cfg: Config = maps.read_config()?;
    if cfg.flags & config_flags::READY == 0 {
        return Ok(x.end(Verdict::Pass, None, "the datapath is not ready (no agent has written its configuration): everything passes"));
    }
    if q.hook == Hook::Pod && A::is_hairpin(daddr) {
        return Ok(x.end(Verdict::Pass, None, "to the hairpin address: a pod's reply to itself, translated only as part of a flow"));
    }
    let vips = A::pinned_vips(maps);
    let Some(vip) = vips.get(&daddr)? else {
        return Ok(x.end(
            Verdict::Pass,
            None,
            format!("{} is no frontend address ({}): not lb's, passes untouched", q.dst.ip(), vips.name),
        ));
    };
    x.step(format!("{} is a frontend address ({})", q.dst.ip(), vip_kinds(vip.flags)));
    let node: Option<NodeConfig> = maps.read_node().ok().filter(|n| n.flags & node_flags::READY != 0);
    if q.hook == Hook::External {
        if vip.flags & NORTH_SOUTH_VIP == 0 {
            return Ok(x.end(Verdict::Pass, None, "a ClusterIP from outside the node is not served: passes"));
        }
        if vip.flags & !vip_flags::NODE_PORT & NORTH_SOUTH_VIP == 0
            && let Some(n) = node
            && !(n.nodeport_min..=n.nodeport_max).contains(&q.dst.port())
        {
            return Ok(x.end(
                Verdict::Pass,
                None,
                format!("port {} is outside the NodePort range: the node's own traffic, passes", q.dst.port()),
            ));
        }
    }
    // Conntrack: an established flow follows its entry.
    let key = CtKeyOf::new(saddr, daddr, sport, dport, q.proto, CT_SERVICE);
    if let Some(e) = A::ct_get(maps, &key)? {
        let st = ct::entry_state(q.proto, CT_SERVICE, &e);
        let fresh = !ct::expired(&cfg.timeouts, st, e.last_seen, now_ns);
        let reopened = ct::restarts(st, q.tcp_flags);
        let valid = revnat::<A>(maps, e.frontend_id).is_some_and(|(_, version)| version == e.frontend_version)
            && backend::<A>(maps, e.backend_id).is_some_and(|b| b.version == e.backend_version);
        if fresh && !reopened && valid {
            describe_frontend::<A>(maps, &mut x, e.frontend_id)?;
            x.selection = Some(Selection::Conntrack);
            x.backend = Some(ct_endpoint::<A>(e.nat_daddr, e.nat_dport));
            x.backend_id = Some(e.backend_id);
            if e.nat_saddr != saddr {
                x.snat = Some(ct_endpoint::<A>(e.nat_saddr, e.nat_sport));
            }
            let state = super::conntrack::state_name(st);
            return Ok(x.end(
                Verdict::Translate,
                None,
                format!(
                    "conntrack hit ({state}, last seen {}s ago): the flow's backend {}",
                    now_ns.saturating_sub(e.last_seen) / 1_000_000_000,
                    ct_endpoint::<A>(e.nat_daddr, e.nat_dport)
                ),
            ));
        }
        let why = if !valid {
            "its frontend or backend is gone"
        } else if !fresh {
            "timed out"
        } else {
            "closed, and this SYN reopens it"
        };
        x.step(format!("a conntrack entry exists but is not used ({why}): a new flow replaces it"));
    } else {
        x.step("no conntrack entry: a new flow");
    }
    let services = A::pinned_services(maps);
    let mut found = services.get(&A::service_key(dst, q.dst.port(), q.proto, SCOPE_EXTERNAL))?;
    // A pod is inside the cluster: where the frontend has an entry for such
    // clients (`in_cluster_service` in `select.rs`), that one serves it.
    if q.hook == Hook::Pod
        && let Some(svc) = found
        && svc.flags & svc_flags::HAS_INTERNAL != 0
        && let Some(inner) = services.get(&A::service_key(dst, q.dst.port(), q.proto, SCOPE_INTERNAL))?
    {
        x.step("a client inside the cluster: the frontend's in-cluster entry serves it, with every endpoint (externalTrafficPolicy: Local holds only for traffic from outside)");
        found = Some(inner);
    }
    let Some(svc) = found else {
        if q.hook == Hook::Pod && vip.flags & vip_flags::CLUSTER_IP != 0 {
            return Ok(x.end(
                Verdict::Reject,
                Some(stat::REJECT_UNSERVED_PORT),
                format!("no Service defines port {} on this ClusterIP: rejected", q.dst.port()),
            ));
        }
        return Ok(x.end(Verdict::Pass, None, format!("no frontend on port {}: passes", q.dst.port())));
    };
    describe_frontend::<A>(maps, &mut x, svc.frontend_id)?;
    if q.hook == Hook::External && svc.flags & NORTH_SOUTH == 0 {
        return Ok(x.end(Verdict::Pass, None, "the frontend is not served from outside: passes"));
    }
    // From outside and from pods alike (kube-proxy's firewall chains see
    // both).
    if svc.flags & svc_flags::SOURCE_RANGES != 0 {
        let (len, data) = SrcRangeOf::client(svc.frontend_id, saddr);
        let allowed = A::pinned_src_ranges(maps).map.get(&LpmKey::new(len, data), 0).is_ok();
        if !allowed {
            return Ok(x.end(
                Verdict::Drop,
                Some(stat::DROP_SOURCE_RANGE),
                format!("{} is outside the loadBalancerSourceRanges: dropped", q.src.ip()),
            ));
        }
        x.step(format!("{} is inside the loadBalancerSourceRanges", q.src.ip()));
    }
    if svc.count == 0 {
        let local = if q.hook == Hook::External { svc_flags::EXT_LOCAL } else { svc_flags::INT_LOCAL | svc_flags::EXT_LOCAL };
        if svc.flags & local != 0 {
            return Ok(x.end(
                Verdict::Drop,
                Some(stat::DROP_NO_LOCAL_BACKEND),
                "a Local traffic policy and no endpoint on this node: dropped",
            ));
        }
        return Ok(x.end(Verdict::Reject, Some(stat::REJECT_NO_BACKEND), "the frontend has no endpoint: rejected (ICMP port unreachable)"));
    }
    select::<A>(maps, &mut x, &cfg, &svc, q, &t, now_ns)?;
    // XDP: a backend on another node is also source-NATed (Cluster policy).
    if q.hook == Hook::External
        && svc.flags & svc_flags::EXT_LOCAL == 0
        && let Some(id) = x.backend_id
        && backend::<A>(maps, id).is_some_and(|b| b.flags & lb_common::backend_flags::LOCAL == 0)
    {
        match (A::snat_addr(maps, node), node) {
            (Some(addr), Some(n)) => {
                let host = if addr.is_ipv6() { format!("[{addr}]") } else { addr.to_string() };
                x.snat = Some(format!("{host}:<port {}-{}>", n.nat_port_min, n.nat_port_max));
                x.step(format!("the backend is on another node: source-NATed to {addr} and forwarded"));
            }
            _ if !A::PASSES_WITHOUT_SNAT => {}
            _ => {
                return Ok(x.end(
                    Verdict::Pass,
                    Some(stat::PASS_NO_NAT66),
                    "the backend is on another node and this node has no IPv6 SNAT address: passes untranslated",
                ));
            }
        }
    }
    x.verdict = Verdict::Translate;
    Ok(x)
}

/// A backend slot in use: its address and port (host order), flags and
/// version.
struct InUse {
    addr: SocketAddr,
    flags: u8,
    version: u16,
}

/// Backend `id` of family `A`, if its slot is in use.
fn backend<A: MapFamily>(maps: &Maps, id: u32) -> Option<InUse> {
    let b = A::backend_slot(&A::pinned_backends(maps).get(id).ok()?);
    let ip: IpAddr = b.ip?.into();
    Some(InUse { addr: SocketAddr::new(ip, b.port), flags: b.flags, version: b.version })
}

/// Frontend `id`'s address and version in family `A`'s rev-NAT slots, if
/// a frontend of this family holds it.
fn revnat<A: MapFamily>(maps: &Maps, id: u32) -> Option<(SocketAddr, u16)> {
    let r = A::revnat_slot(&A::pinned_revnat(maps).get(id).ok()?);
    let ip: IpAddr = r.ip?.into();
    Some((SocketAddr::new(ip, r.port), r.version))
}

/// The backend choice of a new flow (`select_backend` in `select.rs`).
fn select<A: Explained>(
    maps: &Maps,
    x: &mut Explanation,
    cfg: &Config,
    svc: &Service4Value,
    q: &Query,
    t: &Tuple<A>,
    now_ns: u64,
) -> Result<(), MapsError> {
    if svc.flags & svc_flags::AFFINITY != 0 {
        let frontend_version = revnat::<A>(maps, svc.frontend_id).map_or(0, |(_, v)| v);
        let key = Affinity4Key { client: A::affinity_client(maps, t.saddr), frontend_id: svc.frontend_id, frontend_version, _pad: 0 };
        match maps.affinity.get(&key)? {
            Some(a) if now_ns.saturating_sub(a.last_used) <= svc.affinity_timeout as u64 * 1_000_000_000 => {
                if let Some(be) = backend::<A>(maps, a.backend_id)
                    && be.version == a.backend_version
                {
                    x.selection = Some(Selection::Affinity);
                    x.backend = Some(be.addr.to_string());
                    x.backend_id = Some(a.backend_id);
                    x.step(format!(
                        "session affinity: {} used backend {} {}s ago",
                        q.src.ip(),
                        be.addr,
                        now_ns.saturating_sub(a.last_used) / 1_000_000_000
                    ));
                    return Ok(());
                }
                x.step("session affinity: the client's backend is gone");
            }
            Some(_) => x.step("session affinity: the client's entry timed out"),
            None => x.step("session affinity: no entry for this client yet (this flow makes one)"),
        }
    }
    if svc.flags & svc_flags::MAGLEV != 0 && cfg.maglev_m != 0 {
        let hash = A::flow_hash(t.saddr, t.daddr, t.sport, t.dport, q.proto);
        let slot = hash % cfg.maglev_m;
        if let Some(table) = maps.maglev_table(svc.frontend_id)?
            && let Some(&id) = table.get(slot as usize)
            && let Some(be) = backend::<A>(maps, id)
        {
            x.selection = Some(Selection::Maglev);
            x.maglev_slot = Some(slot);
            x.backend = Some(be.addr.to_string());
            x.backend_id = Some(id);
            x.step(format!("Maglev: flow hash {hash:#010x}, slot {slot} of {}: backend {}", cfg.maglev_m, be.addr));
            return Ok(());
        }
        x.step("Maglev: no table (yet): a random slot");
    }
    x.selection = Some(Selection::Random);
    for slot in 0..svc.count {
        let key = SlotKey { frontend_id: svc.frontend_id, slot, generation: svc.generation };
        if let Some(s) = maps.slots.get(&key)?
            && let Some(be) = backend::<A>(maps, s.backend_id)
        {
            x.candidates.push(be.addr.to_string());
        }
    }
    if x.candidates.len() == 1 {
        x.backend = x.candidates.first().cloned();
    }
    x.step(format!("random pick among {} slots: {}", svc.count, x.candidates.join(", ")));
    Ok(())
}

fn describe_frontend<A: MapFamily>(maps: &Maps, x: &mut Explanation, id: u32) -> Result<(), MapsError> {
    let name = maps.names.get(&RevNatKey { frontend_id: id })?.map(|n| svc_name_str(&n));
    let frontend = revnat::<A>(maps, id).map_or_else(|| format!("<no {} frontend>", A::NAME), |(a, _)| a.to_string());
    x.step(format!("frontend {frontend} (ID {id}{})", name.as_deref().map(|n| format!(", {n}")).unwrap_or_default()));
    x.frontend = Some(frontend);
    x.frontend_id = Some(id);
    x.service = name;
    Ok(())
}

fn vip_kinds(flags: u32) -> String {
    let names = [
        (vip_flags::CLUSTER_IP, "ClusterIP"),
        (vip_flags::LOAD_BALANCER, "LoadBalancer"),
        (vip_flags::EXTERNAL_IP, "external IP"),
        (vip_flags::NODE_PORT, "node address with NodePorts"),
    ];
    names.iter().filter(|(f, _)| flags & f != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
}

/// Parses `tcp`, `udp` or `sctp`.
pub fn parse_proto(s: &str) -> Result<u8, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(lb_common::IPPROTO_TCP),
        "udp" => Ok(lb_common::IPPROTO_UDP),
        "sctp" => Ok(lb_common::IPPROTO_SCTP),
        other => Err(format!("unknown protocol {other:?}: tcp, udp or sctp")),
    }
}

/// Parses TCP flags as letters (`S`, `SA`, `A`, `F`, `R`).
pub fn parse_tcp_flags(s: &str) -> Result<u8, String> {
    let mut f = 0;
    for c in s.chars() {
        f |= match c.to_ascii_uppercase() {
            'S' => ct_flags::SYN,
            'A' => ct_flags::ACK,
            'F' => ct_flags::FIN,
            'R' => ct_flags::RST,
            other => return Err(format!("unknown TCP flag {other:?}: S, A, F or R")),
        };
    }
    Ok(f)
}

pub fn render(x: &Explanation) -> String {
    let mut out = String::new();
    for (i, s) in x.steps.iter().enumerate() {
        out.push_str(&format!("{}. {s}\n", i + 1));
    }
    let verdict = match x.verdict {
        Verdict::Pass => "PASS".to_string(),
        Verdict::Translate => match (&x.backend, x.candidates.len()) {
            (Some(b), _) => format!("TRANSLATE to {b}"),
            (None, _) => format!("TRANSLATE to one of {}", x.candidates.join(", ")),
        },
        Verdict::Reject => "REJECT".to_string(),
        Verdict::Drop => "DROP".to_string(),
    };
    out.push_str(&verdict);
    if let Some(r) = x.reason {
        out.push_str(&format!(" (counted as {r})"));
    }
    if let Some(s) = &x.snat {
        out.push_str(&format!(", source-NATed to {s}"));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_protocols_and_flags() {
        assert_eq!(parse_proto("TCP"), Ok(lb_common::IPPROTO_TCP));
        assert!(parse_proto("icmp").is_err());
        assert_eq!(parse_tcp_flags("SA"), Ok(ct_flags::SYN | ct_flags::ACK));
        assert!(parse_tcp_flags("X").is_err());
    }
}
