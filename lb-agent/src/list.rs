//! Renders what the pinned maps hold as a table, the way an operator reads
//! it: one row per frontend with its backends.

use std::{fmt::Write as _, net::Ipv4Addr};

use lb_common::{BackendKey, RevNatKey, SlotKey, backend_flags};

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
        let name = maps
            .names
            .get(&RevNatKey { id: value.id })?
            .map(|n| svc_name_str(&n))
            .unwrap_or_default();
        let mut backends = Vec::new();
        for slot in 0..value.count {
            let slot_key = SlotKey { svc_id: value.id, slot, generation: value.generation };
            let Some(s) = maps.slots.get(&slot_key)? else {
                backends.push(format!("?slot{slot}"));
                continue;
            };
            match maps.backends.get(&BackendKey { id: s.backend_id })? {
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
        rows.push(Row { id: value.id, frontend, name, backends });
    }
    Ok(rows)
}

/// The table `lb-agent list` prints.
pub fn render(maps: &Maps) -> Result<String, MapsError> {
    let rows = rows(maps)?;
    let w_front = rows.iter().map(|r| r.frontend.len()).max().unwrap_or(0).max("FRONTEND".len());
    let w_name = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max("SERVICE".len());
    let mut out = String::new();
    let _ = writeln!(out, "{:>5}  {:<w_front$}  {:<w_name$}  BACKENDS", "ID", "FRONTEND", "SERVICE");
    for r in &rows {
        let backends = if r.backends.is_empty() {
            "(none: rejects)".to_string()
        } else {
            r.backends.join(", ")
        };
        let _ = writeln!(out, "{:>5}  {:<w_front$}  {:<w_name$}  {backends}", r.id, r.frontend, r.name);
    }
    let ct = maps.ct.entries()?.len();
    let _ = writeln!(
        out,
        "{} frontends, {} backends, {} conntrack entries (of {})",
        rows.len(),
        maps.backends.entries()?.len(),
        ct,
        maps.ct.max_entries
    );
    Ok(out)
}
