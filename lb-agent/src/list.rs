//! Renders what the pinned maps hold as a table, the way an operator reads
//! it: one row per frontend with its backends.

use std::{fmt::Write as _, net::Ipv4Addr};

use lb_common::{RevNatKey, SlotKey, backend_flags, node_flags, svc_flags};

use crate::{
    maps::{Maps, MapsError, svc_name_str},
    model::FrontendAddr,
};

/// One frontend as read back from the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub id: u32,
    pub frontend: String,
    pub name: String,
    /// `ip:port`, with ` (terminating)` where flagged; `?<id>` for a slot
    /// whose backend is missing.
    pub backends: Vec<String>,
    /// What kind of frontend and which policies apply, e.g.
    /// `NodePort,Local`; empty for a plain ClusterIP.
    pub kind: String,
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

/// Reads every frontend, sorted by address.
pub fn rows(maps: &Maps) -> Result<Vec<Row>, MapsError> {
    let mut services = maps.services.entries()?;
    services.sort_by_key(|(k, _)| (u32::from_be(k.addr), u16::from_be(k.port), k.proto));
    let mut rows = Vec::new();
    for (key, value) in services {
        let frontend = match FrontendAddr::from_key(&key) {
            Some(f) => f.to_string(),
            None => format!("{}:{}/{}", Ipv4Addr::from(key.addr.to_ne_bytes()), u16::from_be(key.port), key.proto),
        };
        let name = maps.names.get(&RevNatKey { frontend_id: value.frontend_id })?.map(|n| svc_name_str(&n)).unwrap_or_default();
        let mut backends = Vec::new();
        for slot in 0..value.count {
            let slot_key = SlotKey { frontend_id: value.frontend_id, slot, generation: value.generation };
            let Some(s) = maps.slots.get(&slot_key)? else {
                backends.push(format!("?slot{slot}"));
                continue;
            };
            match Some(maps.backends.get(s.backend_id)?).filter(|b| b.addr != 0) {
                Some(b) => {
                    let mut text = format!("{}:{}", Ipv4Addr::from(b.addr.to_ne_bytes()), u16::from_be(b.port));
                    if b.flags & backend_flags::TERMINATING != 0 {
                        text.push_str(" (terminating)");
                    }
                    backends.push(text);
                }
                None => backends.push(format!("?{}", s.backend_id)),
            }
        }
        rows.push(Row { id: value.frontend_id, frontend, name, backends, kind: kind(value.flags) });
    }
    Ok(rows)
}

/// The table `lb-agent list` prints.
pub fn render(maps: &Maps) -> Result<String, MapsError> {
    let rows: Vec<Row> = rows(maps)?
        .into_iter()
        .map(|mut r| {
            if !r.kind.is_empty() {
                r.name = format!("{} [{}]", r.name, r.kind);
            }
            r
        })
        .collect();
    let w_front = rows.iter().map(|r| r.frontend.len()).max().unwrap_or(0).max("FRONTEND".len());
    let w_name = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max("SERVICE".len());
    let mut out = String::new();
    if let Some(line) = north_south(maps)? {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "{:>5}  {:<w_front$}  {:<w_name$}  BACKENDS", "ID", "FRONTEND", "SERVICE");
    for r in &rows {
        let backends = if r.backends.is_empty() { "(none: rejects)".to_string() } else { r.backends.join(", ") };
        let _ = writeln!(out, "{:>5}  {:<w_front$}  {:<w_name$}  {backends}", r.id, r.frontend, r.name);
    }
    let ct = maps.ct.entries()?.len();
    let _ = writeln!(
        out,
        "{} frontends, {} backends, {} conntrack entries (of {})",
        rows.len(),
        maps.live_backends()?.len(),
        ct,
        maps.ct.capacity()
    );
    Ok(out)
}

/// `north-south: XDP native on eth0; SNAT 192.168.50.1 ports 61000-65535`,
/// or `None` before an agent wrote the node settings.
pub fn north_south(maps: &Maps) -> Result<Option<String>, MapsError> {
    let node = maps.read_node()?;
    if node.flags & node_flags::READY == 0 {
        return Ok(None);
    }
    let mut devices = maps.devices.entries()?;
    devices.sort_by_key(|(idx, _)| *idx);
    if devices.is_empty() && node.snat_addr == 0 {
        return Ok(Some("north-south: off (no external interface)".to_string()));
    }
    let xdp = if devices.is_empty() {
        "no XDP (no external interface)".to_string()
    } else {
        let list: Vec<String> = devices
            .iter()
            .map(|(_, d)| {
                let end = d.name.iter().position(|&b| b == 0).unwrap_or(d.name.len());
                format!(
                    "XDP {} on {} ({})",
                    crate::datapath::xdp_mode_name(d.mode),
                    String::from_utf8_lossy(&d.name[..end]),
                    crate::datapath::xdp_why_text(d.why)
                )
            })
            .collect();
        list.join(", ")
    };
    let snat = if node.snat_addr == 0 {
        "no SNAT".to_string()
    } else {
        format!("SNAT {} ports {}-{}", Ipv4Addr::from(node.snat_addr.to_ne_bytes()), node.nat_port_min, node.nat_port_max)
    };
    Ok(Some(format!("north-south: {xdp}; {snat}")))
}
