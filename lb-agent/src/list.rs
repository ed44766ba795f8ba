//! Renders what the pinned maps hold, the way an operator reads it: one
//! row per frontend with its backends, its policies and its counters; a
//! table or JSON (`-o json`, field names stable).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use lb_common::{Family, FrontendStats, RevNatKey, SCOPE_INTERNAL, Service4Value, SlotKey, V6, backend_flags, ipv6, node_flags, svc_flags};
use serde::Serialize;

use crate::{
    maps::{Maps, MapsError, svc_name_str},
    model::{FrontendAddr, Protocol},
    reconcile::MapFamily,
};

/// Family `A`'s source ranges by frontend ID (`cidr` strings, sorted).
fn source_ranges<A: MapFamily>(maps: &Maps, out: &mut BTreeMap<u32, Vec<String>>) -> Result<(), MapsError> {
    let mut entries: Vec<(u32, A, u32)> =
        A::pinned_src_ranges(maps).entries()?.into_iter().map(|(len, d)| (u32::from_be(d.frontend_id), A::vip_ip(d.addr), len)).collect();
    entries.sort_unstable();
    for (id, addr, len) in entries {
        out.entry(id).or_default().push(format!("{addr}/{}", len.saturating_sub(32)));
    }
    Ok(())
}

/// One frontend as read back from the maps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    pub id: u32,
    /// `ip:port/PROTO` (`[ip]:port/PROTO` for IPv6).
    pub frontend: String,
    /// `namespace/name:port` as the agent labelled it.
    pub name: String,
    /// `ip:port`, with ` (terminating)` where flagged; `?<id>` for a slot
    /// whose backend is missing.
    pub backends: Vec<String>,
    /// What kind of frontend and which policies apply, e.g.
    /// `NodePort,Local`; empty for a plain ClusterIP.
    pub kind: String,
    /// `namespace/name` (the label without its port).
    pub service: String,
    /// `external` (every client, the usual entry) or `internal` (a second
    /// entry for clients inside the cluster, when the internal and external
    /// traffic policies select different backends).
    pub scope: &'static str,
    /// `Cluster` or `Local`: the traffic policy that applies to this
    /// entry's clients.
    pub policy: &'static str,
    /// sessionAffinity ClientIP timeout in seconds; 0: no affinity.
    pub affinity_timeout_s: u32,
    /// `maglev` or `random`.
    pub selection: &'static str,
    /// Whether loadBalancerSourceRanges apply.
    pub source_ranges: bool,
    /// The loadBalancerSourceRanges CIDRs the frontend's family's trie
    /// (`LB4_SRC_RANGES`, `LB6_SRC_RANGES`) holds for it, sorted.
    pub allowed_sources: Vec<String>,
}

/// A frontend with what the datapath counted for it (`LB_FE_STATS`), as
/// `lb-agent list` prints it. Apart from [`Row`], whose value stays the
/// same while traffic flows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub row: Row,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Every frontend with its counters, sorted by address.
pub fn listed(maps: &Maps) -> Result<Vec<Listed>, MapsError> {
    rows(maps)?
        .into_iter()
        .map(|row| {
            let FrontendStats { packets, bytes, new_flows } = maps.frontend_stats(row.id)?;
            Ok(Listed { row, packets, bytes, new_flows })
        })
        .collect()
}

/// Which frontends `lb-agent list` shows.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `namespace/name`.
    pub service: Option<String>,
    /// `ip:port` (any protocol) or `ip:port/PROTO`.
    pub frontend: Option<String>,
}

impl Filter {
    pub fn keeps(&self, r: &Row) -> bool {
        if let Some(s) = &self.service
            && r.service != *s
        {
            return false;
        }
        if let Some(f) = &self.frontend {
            let base = r.frontend.split('/').next().unwrap_or_default();
            if r.frontend != *f && base != f {
                return false;
            }
        }
        true
    }
}

/// The service (`namespace/name`) of a label `namespace/name:port`.
pub fn service_of(label: &str) -> &str {
    label.rsplit_once(':').map_or(label, |(s, _)| s)
}

/// The traffic policy of an entry: which `Local` flag applies to its
/// clients.
pub fn policy(flags: u32, scope: u8) -> &'static str {
    let local = if scope == SCOPE_INTERNAL {
        flags & svc_flags::INT_LOCAL != 0
    } else {
        let ns = svc_flags::NODE_PORT | svc_flags::EXTERNAL_IP | svc_flags::LOAD_BALANCER;
        if flags & ns != 0 { flags & svc_flags::EXT_LOCAL != 0 } else { flags & svc_flags::INT_LOCAL != 0 }
    };
    if local { "Local" } else { "Cluster" }
}

/// The kind and policies of a frontend from its `svc_flags`.
pub fn kind(flags: u32) -> String {
    let names = [
        (svc_flags::NODE_PORT, "NodePort"),
        (svc_flags::EXTERNAL_IP, "ExternalIP"),
        (svc_flags::LOAD_BALANCER, "LoadBalancer"),
        (svc_flags::EXT_LOCAL, "Local"),
        (svc_flags::SOURCE_RANGES, "SourceRanges"),
    ];
    let ns = svc_flags::NODE_PORT | svc_flags::EXTERNAL_IP | svc_flags::LOAD_BALANCER;
    if flags & ns == 0 {
        return String::new();
    }
    names.iter().filter(|(f, _)| flags & f != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(",")
}

/// Reads every frontend, sorted by address: IPv4, then IPv6.
pub fn rows(maps: &Maps) -> Result<Vec<Row>, MapsError> {
    let mut ranges = BTreeMap::new();
    source_ranges::<Ipv4Addr>(maps, &mut ranges)?;
    source_ranges::<Ipv6Addr>(maps, &mut ranges)?;
    let mut services = maps.services.entries()?;
    services.sort_by_key(|(k, _)| (u32::from_be(k.addr), u16::from_be(k.port), k.proto, k.scope));
    let mut rows = Vec::new();
    for (key, value) in services {
        let frontend = match FrontendAddr::from_key(&key) {
            // The scope has a column of its own.
            Some(f) => f.address(),
            None => format!("{}:{}/{}", Ipv4Addr::from(key.addr.to_ne_bytes()), u16::from_be(key.port), key.proto),
        };
        let backend = |id| -> Result<_, MapsError> {
            let b = maps.backends.get(id)?;
            Ok((b.addr != 0).then(|| (SocketAddr::from((Ipv4Addr::from(b.addr.to_ne_bytes()), u16::from_be(b.port))), b.flags)))
        };
        rows.push(row(maps, frontend, key.scope, &value, &ranges, backend)?);
    }
    let mut services6 = maps.v6.services.entries()?;
    services6.sort_by_key(|(k, _)| (ipv6(k.addr), u16::from_be(k.port), k.proto));
    for (key, value) in services6 {
        let frontend = format!("{}/{}", SocketAddr::from((ipv6(key.addr), u16::from_be(key.port))), proto_name(key.proto));
        let backend = |id| -> Result<_, MapsError> {
            let b = maps.v6.backends.get(id)?;
            Ok(V6::backend_addr(&b).map(|(a, p)| (SocketAddr::from((ipv6(a), u16::from_be(p))), b.flags)))
        };
        rows.push(row(maps, frontend, key.scope, &value, &ranges, backend)?);
    }
    Ok(rows)
}

fn proto_name(proto: u8) -> String {
    Protocol::from_number(proto).map_or_else(|| proto.to_string(), |p| p.to_string())
}

/// One frontend's row, of either family: `backend` reads a backend slot
/// of the frontend's family (its address and flags, `None` when unused).
fn row(
    maps: &Maps,
    frontend: String,
    scope: u8,
    value: &Service4Value,
    ranges: &BTreeMap<u32, Vec<String>>,
    backend: impl Fn(u32) -> Result<Option<(SocketAddr, u8)>, MapsError>,
) -> Result<Row, MapsError> {
    let name = maps.names.get(&RevNatKey { frontend_id: value.frontend_id })?.map(|n| svc_name_str(&n)).unwrap_or_default();
    let mut backends = Vec::new();
    for slot in 0..value.count {
        let slot_key = SlotKey { frontend_id: value.frontend_id, slot, generation: value.generation };
        let Some(s) = maps.slots.get(&slot_key)? else {
            backends.push(format!("?slot{slot}"));
            continue;
        };
        match backend(s.backend_id)? {
            Some((addr, flags)) => {
                let mut text = addr.to_string();
                if flags & backend_flags::TERMINATING != 0 {
                    text.push_str(" (terminating)");
                }
                backends.push(text);
            }
            None => backends.push(format!("?{}", s.backend_id)),
        }
    }
    Ok(Row {
        id: value.frontend_id,
        frontend,
        service: service_of(&name).to_string(),
        name,
        backends,
        kind: kind(value.flags),
        scope: if scope == SCOPE_INTERNAL { "internal" } else { "external" },
        policy: policy(value.flags, scope),
        affinity_timeout_s: if value.flags & svc_flags::AFFINITY != 0 { value.affinity_timeout } else { 0 },
        selection: if value.flags & svc_flags::MAGLEV != 0 { "maglev" } else { "random" },
        source_ranges: value.flags & svc_flags::SOURCE_RANGES != 0,
        allowed_sources: if value.flags & svc_flags::SOURCE_RANGES != 0 {
            ranges.get(&value.frontend_id).cloned().unwrap_or_default()
        } else {
            Vec::new()
        },
    })
}

/// The table `lb-agent list` prints (every frontend).
pub fn render(maps: &Maps) -> Result<String, MapsError> {
    render_filtered(maps, &Filter::default())
}

/// The table `lb-agent list` prints, of the frontends `filter` keeps.
pub fn render_filtered(maps: &Maps, filter: &Filter) -> Result<String, MapsError> {
    let all = listed(maps)?;
    let total = all.len();
    let rows: Vec<Listed> = all
        .into_iter()
        .filter(|l| filter.keeps(&l.row))
        .map(|mut l| {
            if !l.row.kind.is_empty() {
                // The ranges after their flag: `[LoadBalancer,SourceRanges fd00:50::/64]`.
                let ranges = l.row.allowed_sources.iter().map(|c| format!(" {c}")).collect::<String>();
                l.row.name = format!("{} [{}{ranges}]", l.row.name, l.row.kind);
            }
            l
        })
        .collect();
    let w_front = rows.iter().map(|l| l.row.frontend.len()).max().unwrap_or(0).max("FRONTEND".len());
    let w_name = rows.iter().map(|l| l.row.name.len()).max().unwrap_or(0).max("SERVICE".len());
    let mut out = String::new();
    if let Some(line) = north_south(maps)? {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "{:>5}  {:<w_front$}  {:<w_name$}  {:<8}  {:<7}  {:<8}  {:<7}  {:>10}  {:>9}  BACKENDS",
        "ID", "FRONTEND", "SERVICE", "SCOPE", "POLICY", "AFFINITY", "SELECT", "PACKETS", "NEW FLOWS"
    );
    for l in &rows {
        let r = &l.row;
        let backends = if r.backends.is_empty() { "(none: rejects)".to_string() } else { r.backends.join(", ") };
        let affinity = if r.affinity_timeout_s == 0 { "-".to_string() } else { format!("{}s", r.affinity_timeout_s) };
        let _ = writeln!(
            out,
            "{:>5}  {:<w_front$}  {:<w_name$}  {:<8}  {:<7}  {:<8}  {:<7}  {:>10}  {:>9}  {backends}",
            r.id, r.frontend, r.name, r.scope, r.policy, affinity, r.selection, l.packets, l.new_flows
        );
    }
    let ct = maps.ct.entries()?.len();
    let (ct6_tcp, ct6_any) = (&maps.v6.ct_tcp, &maps.v6.ct_any);
    let ct6 = ct6_tcp.entries()?.len() + ct6_any.entries()?.len();
    let shown = if rows.len() == total { String::new() } else { format!(" ({} shown)", rows.len()) };
    let _ = writeln!(
        out,
        "{total} frontends{shown}, {} backends, {} conntrack entries (of {}), {} IPv6 (of {})",
        maps.live_backends()?.len() + maps.live_backends6()?,
        ct,
        maps.ct.capacity(),
        ct6,
        ct6_tcp.max_entries as u64 + ct6_any.max_entries as u64
    );
    Ok(out)
}

/// `lb-agent list -o json`: the rows `filter` keeps.
pub fn json(maps: &Maps, filter: &Filter) -> Result<serde_json::Value, MapsError> {
    let rows: Vec<Listed> = listed(maps)?.into_iter().filter(|l| filter.keeps(&l.row)).collect();
    Ok(serde_json::json!({ "frontends": rows }))
}

/// `north-south: XDP native on eth0; SNAT 192.168.50.1 ports 61000-65535`
/// (and `; SNAT6 fd00::1` with an IPv6 SNAT address),
/// or `None` before an agent wrote the node settings.
pub fn north_south(maps: &Maps) -> Result<Option<String>, MapsError> {
    let node = maps.read_node()?;
    if node.flags & node_flags::READY == 0 {
        return Ok(None);
    }
    let mut devices = maps.devices.entries()?;
    devices.sort_by_key(|(idx, _)| *idx);
    // The IPv6 SNAT address (NAT66), with the same ports.
    let snat6 = match maps.read_node6().map(|n| lb_common::ipv6(n.snat_addr)) {
        Ok(a) if !a.is_unspecified() => Some(a),
        _ => None,
    };
    if devices.is_empty() && node.snat_addr == 0 && snat6.is_none() {
        return Ok(Some("north-south: off (no external interface)".to_string()));
    }
    let xdp = if devices.is_empty() {
        "no XDP (no external interface)".to_string()
    } else {
        let list: Vec<String> = devices
            .iter()
            .map(|(_, d)| {
                let end = d.name.iter().position(|&b| b == 0).unwrap_or(d.name.len());
                let hook = match d.mode {
                    lb_common::xdp_mode::TC => "tc".to_string(),
                    mode => format!("XDP {}", crate::datapath::xdp_mode_name(mode)),
                };
                format!("{hook} on {} ({})", String::from_utf8_lossy(&d.name[..end]), crate::datapath::xdp_why_text(d.why))
            })
            .collect();
        list.join(", ")
    };
    let snat = if node.snat_addr == 0 {
        "no SNAT".to_string()
    } else {
        format!("SNAT {} ports {}-{}", Ipv4Addr::from(node.snat_addr.to_ne_bytes()), node.nat_port_min, node.nat_port_max)
    };
    let snat6 = snat6.map_or(String::new(), |a| format!("; SNAT6 {a}"));
    Ok(Some(format!("north-south: {xdp}; {snat}{snat6}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_by_scope_and_kind() {
        assert_eq!(policy(0, 0), "Cluster");
        assert_eq!(policy(svc_flags::INT_LOCAL, 0), "Local", "a ClusterIP entry follows internalTrafficPolicy");
        assert_eq!(policy(svc_flags::NODE_PORT | svc_flags::INT_LOCAL, 0), "Cluster", "a NodePort follows externalTrafficPolicy");
        assert_eq!(policy(svc_flags::NODE_PORT | svc_flags::EXT_LOCAL, 0), "Local");
        assert_eq!(policy(svc_flags::NODE_PORT | svc_flags::INT_LOCAL, SCOPE_INTERNAL), "Local");
        assert_eq!(service_of("default/web:http"), "default/web");
        assert_eq!(service_of("default/web"), "default/web");
    }
}
