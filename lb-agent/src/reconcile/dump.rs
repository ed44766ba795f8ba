//! A stable, readable text of everything the reconciler writes, from any
//! [`MapStore`]: the golden form the table-driven tests compare, and the
//! same for the pinned maps and the fakes, so one can be checked against
//! the other.
//!
//! One section per map that holds anything, entries sorted, addresses
//! and ports in host form; array slots that are all zeroes are left out,
//! and a free slot that kept its version shows as `-`:
//!
//! ```text
//! LB4_VIPS
//!   10.96.0.1 ClusterIP
//! LB4_SERVICES
//!   10.96.0.1:80/TCP id 1 gen 0 count 2
//! LB4_SLOTS
//!   1/0: 1 2
//! LB4_BACKENDS
//!   1 v1 10.244.1.1:8080/TCP
//!   2 v1 10.244.1.2:8080/TCP terminating
//!   3 v1 -
//! LB4_REVNAT
//!   1 v1 10.96.0.1:80
//! LB_SVC_NAMES
//!   1 test/web
//! ```
//!
//! The IPv6 maps follow their IPv4 twins (`LB6_VIPS` after `LB4_VIPS`,
//! ...), addresses as `[fd00::1]:80`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use lb_common::{CT_SERVICE, backend_flags, svc_flags, vip_flags};

use super::store::{CtMap, MapFamily, MapKind, MapStore};
use crate::{
    maps::{MapsError, svc_name_str},
    model::Protocol,
};

fn ip(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

fn proto(n: u8) -> String {
    Protocol::from_number(n).map_or_else(|| format!("proto{n}"), |p| p.to_string())
}

fn flag_names(flags: u32, names: &[(u32, &str)]) -> String {
    let mut out: Vec<String> = names.iter().filter(|(f, _)| flags & f != 0).map(|(_, n)| n.to_string()).collect();
    let known = names.iter().fold(0, |acc, (f, _)| acc | f);
    if flags & !known != 0 {
        out.push(format!("{:#x}", flags & !known));
    }
    out.join(",")
}

fn svc_flag_names(flags: u32) -> String {
    flag_names(
        flags,
        &[
            (svc_flags::NODE_PORT, "NodePort"),
            (svc_flags::EXTERNAL_IP, "ExternalIP"),
            (svc_flags::LOAD_BALANCER, "LoadBalancer"),
            (svc_flags::EXT_LOCAL, "ExtLocal"),
            (svc_flags::INT_LOCAL, "IntLocal"),
            (svc_flags::AFFINITY, "Affinity"),
            (svc_flags::MAGLEV, "Maglev"),
            (svc_flags::SOURCE_RANGES, "SourceRanges"),
            (svc_flags::HAS_INTERNAL, "HasInternal"),
        ],
    )
}

/// Appends a section if it has lines.
fn section(out: &mut String, map: MapKind, lines: Vec<String>) {
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(out, "{}", map.name());
    for l in lines {
        let _ = writeln!(out, "  {l}");
    }
}

/// Backend IDs, or `i:id` pairs where indexes are missing.
fn id_list(entries: &[(u16, u32)]) -> String {
    let contiguous = entries.iter().enumerate().all(|(i, (slot, _))| i == *slot as usize);
    let items: Vec<String> = entries.iter().map(|(slot, id)| if contiguous { id.to_string() } else { format!("{slot}:{id}") }).collect();
    items.join(" ")
}

/// Everything the reconciler keeps in `maps`, with conntrack and affinity.
pub fn dump(maps: &impl MapStore) -> Result<String, MapsError> {
    let mut out = String::new();

    vips::<Ipv4Addr>(&mut out, maps)?;
    vips::<Ipv6Addr>(&mut out, maps)?;
    services::<Ipv4Addr>(&mut out, maps)?;
    services::<Ipv6Addr>(&mut out, maps)?;

    let mut slots: BTreeMap<(u32, u16), Vec<(u16, u32)>> = BTreeMap::new();
    for (k, s) in maps.slots()? {
        slots.entry((k.frontend_id, k.generation)).or_default().push((k.slot, s.backend_id));
    }
    section(
        &mut out,
        MapKind::Slots,
        slots
            .into_iter()
            .map(|((id, generation), mut entries)| {
                entries.sort_unstable();
                format!("{id}/{generation}: {}", id_list(&entries))
            })
            .collect(),
    );

    backends::<Ipv4Addr>(&mut out, maps)?;
    backends::<Ipv6Addr>(&mut out, maps)?;
    revnats::<Ipv4Addr>(&mut out, maps)?;
    revnats::<Ipv6Addr>(&mut out, maps)?;

    let mut names = maps.names()?;
    names.sort_by_key(|(id, _)| *id);
    section(&mut out, MapKind::Names, names.iter().map(|(id, n)| format!("{id} {}", svc_name_str(n))).collect());

    let mut maglev = Vec::new();
    let mut ids = maps.maglev_ids()?;
    ids.sort_unstable();
    for id in ids {
        if let Some(table) = maps.maglev_table(id)? {
            let t: Vec<String> = table.iter().map(u32::to_string).collect();
            maglev.push(format!("{id}: {}", t.join(" ")));
        }
    }
    section(&mut out, MapKind::Maglev, maglev);

    src_ranges::<Ipv4Addr>(&mut out, maps)?;
    src_ranges::<Ipv6Addr>(&mut out, maps)?;

    for map in CtMap::BOTH {
        let mut lines: Vec<String> = maps
            .ct_entries::<Ipv4Addr>(map)?
            .iter()
            .map(|(k, e)| {
                format!(
                    "{}:{} -> {}:{} {} {}: frontend {} v{} backend {} v{}",
                    ip(k.saddr),
                    u16::from_be(k.sport),
                    ip(k.daddr),
                    u16::from_be(k.dport),
                    proto(k.proto),
                    if k.dir == CT_SERVICE { "service" } else { "reply" },
                    e.frontend_id,
                    e.frontend_version,
                    e.backend_id,
                    e.backend_version
                )
            })
            .collect();
        lines.sort_unstable();
        section(&mut out, map.kind(), lines);
    }

    let mut affinity: Vec<String> = maps
        .affinity()?
        .iter()
        .map(|(k, a)| {
            let client = if k.client & lb_common::AFFINITY_NETNS != 0 {
                format!("netns {}", k.client & !lb_common::AFFINITY_NETNS)
            } else {
                ip(k.client as u32).to_string()
            };
            format!("{client} frontend {} v{}: backend {} v{}", k.frontend_id, k.frontend_version, a.backend_id, a.backend_version)
        })
        .collect();
    affinity.sort_unstable();
    section(&mut out, MapKind::Affinity, affinity);
    Ok(out)
}

/// `ip:port`, `[ip]:port` for IPv6.
fn socket<A: MapFamily>(ip: A, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// `LB4_SRC_RANGES` / `LB6_SRC_RANGES`: `id cidr` lines.
fn src_ranges<A: MapFamily>(out: &mut String, maps: &impl MapStore) -> Result<(), MapsError> {
    let mut ranges: Vec<(u32, A, u32)> =
        maps.src_ranges::<A>()?.into_iter().map(|(len, d)| (u32::from_be(d.frontend_id), A::vip_ip(d.addr), len)).collect();
    ranges.sort_unstable();
    section(out, A::SRC_RANGES, ranges.iter().map(|(id, addr, len)| format!("{id} {addr}/{}", len.saturating_sub(32))).collect());
    Ok(())
}

fn vips<A: MapFamily>(out: &mut String, maps: &impl MapStore) -> Result<(), MapsError> {
    let mut vips: Vec<(A, u32)> = maps.vips::<A>()?.into_iter().map(|(a, v)| (A::vip_ip(a), v.flags)).collect();
    vips.sort_unstable();
    let kinds = [
        (vip_flags::CLUSTER_IP, "ClusterIP"),
        (vip_flags::LOAD_BALANCER, "LoadBalancer"),
        (vip_flags::EXTERNAL_IP, "ExternalIP"),
        (vip_flags::NODE_PORT, "NodePort"),
    ];
    section(out, A::VIPS, vips.iter().map(|(a, f)| format!("{a} {}", flag_names(*f, &kinds))).collect());
    Ok(())
}

fn services<A: MapFamily>(out: &mut String, maps: &impl MapStore) -> Result<(), MapsError> {
    let mut services: Vec<_> = maps.services::<A>()?.into_iter().map(|(k, v)| (A::service_parts(&k), v)).collect();
    services.sort_by_key(|(k, _)| *k);
    section(
        out,
        A::SERVICES,
        services
            .iter()
            .map(|((ip, port, p, scope), v)| {
                let mut l = format!("{}/{}", socket(*ip, *port), proto(*p));
                if *scope != lb_common::SCOPE_EXTERNAL {
                    let _ = write!(l, " scope {scope}");
                }
                let _ = write!(l, " id {} gen {} count {}", v.frontend_id, v.generation, v.count);
                if v.flags != 0 {
                    let _ = write!(l, " {}", svc_flag_names(v.flags));
                }
                if v.affinity_timeout != 0 {
                    let _ = write!(l, " timeout {}s", v.affinity_timeout);
                }
                l
            })
            .collect(),
    );
    Ok(())
}

fn backends<A: MapFamily>(out: &mut String, maps: &impl MapStore) -> Result<(), MapsError> {
    let mut backends: Vec<_> = maps.backends::<A>()?.iter().map(|(id, b)| (*id, A::backend_slot(b))).collect();
    backends.sort_by_key(|(id, _)| *id);
    section(
        out,
        A::BACKENDS,
        backends
            .iter()
            .filter(|(_, b)| b.ip.is_some() || b.version != 0 || b.port != 0 || b.flags != 0)
            .map(|(id, b)| {
                let Some(ip) = b.ip else {
                    return format!("{id} v{} -", b.version);
                };
                let mut l = format!("{id} v{} {}/{}", b.version, socket(ip, b.port), proto(b.proto));
                let flags = flag_names(
                    b.flags as u32,
                    &[(backend_flags::TERMINATING as u32, "terminating"), (backend_flags::LOCAL as u32, "local")],
                );
                if !flags.is_empty() {
                    let _ = write!(l, " {flags}");
                }
                l
            })
            .collect(),
    );
    Ok(())
}

fn revnats<A: MapFamily>(out: &mut String, maps: &impl MapStore) -> Result<(), MapsError> {
    let mut revnats: Vec<_> = maps.revnats::<A>()?.iter().map(|(id, r)| (*id, A::revnat_slot(r))).collect();
    revnats.sort_by_key(|(id, _)| *id);
    section(
        out,
        A::REVNAT,
        revnats
            .iter()
            .filter(|(_, r)| r.ip.is_some() || r.version != 0 || r.port != 0)
            .map(|(id, r)| match r.ip {
                None => format!("{id} v{} -", r.version),
                Some(ip) => format!("{id} v{} {}", r.version, socket(ip, r.port)),
            })
            .collect(),
    );
    Ok(())
}
