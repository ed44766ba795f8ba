//! `lb-agent stats`: the datapath's counters by reason, what each Service
//! served, and how full each map is.

use aya::maps::{Array, MapData};
use lb_common::stat;
use serde::Serialize;

use crate::{
    list,
    maps::{Maps, MapsError, Named},
};

/// One datapath counter (`lb_common::stat`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// Stable name (`stat::NAMES`).
    pub reason: &'static str,
    /// Whether the packets it counts were dropped or rejected.
    pub drop: bool,
    pub packets: u64,
    pub help: &'static str,
}

/// What one Service served, over its frontends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceCounters {
    /// `namespace/name`.
    pub service: String,
    pub frontends: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// How full one map is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fill {
    pub map: &'static str,
    pub entries: u64,
    pub max_entries: u32,
    /// entries / max_entries, in percent.
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stats {
    pub reasons: Vec<Reason>,
    pub services: Vec<ServiceCounters>,
    pub maps: Vec<Fill>,
}

/// The datapath counters by reason.
pub fn reasons(maps: &Maps) -> Result<Vec<Reason>, MapsError> {
    let counts = maps.stats()?;
    Ok(stat::NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| Reason { reason: name, drop: stat::is_drop(i as u32), packets: counts[i], help: stat::HELP[i] })
        .collect())
}

/// Per-Service counters summed from the frontend rows, by name.
pub fn services(rows: &[list::Listed]) -> Vec<ServiceCounters> {
    let mut by: std::collections::BTreeMap<&str, ServiceCounters> = Default::default();
    for r in rows {
        let service = &r.row.service;
        let s = by.entry(service.as_str()).or_insert_with(|| ServiceCounters { service: service.clone(), ..Default::default() });
        s.frontends += 1;
        s.packets += r.packets;
        s.bytes += r.bytes;
        s.new_flows += r.new_flows;
    }
    by.into_values().collect()
}

fn fill(map: &'static str, entries: usize, max_entries: u32) -> Fill {
    let percent = if max_entries == 0 { 0.0 } else { (entries as f64 * 1000.0 / max_entries as f64).round() / 10.0 };
    Fill { map, entries: entries as u64, max_entries, percent }
}

/// How full each map with a capacity that matters is.
pub fn fills(maps: &Maps) -> Result<Vec<Fill>, MapsError> {
    let live_revnat = maps.revnat.slots()?.into_iter().filter(|(_, r)| r.addr != 0).count();
    Ok(vec![
        fill(maps.services.name, maps.services.entries()?.len(), maps.services.max_entries),
        fill(maps.revnat.name, live_revnat, maps.revnat.max_entries),
        fill(maps.backends.name, maps.live_backends()?.len(), maps.backends.max_entries),
        fill(maps.slots.name, maps.slots.entries()?.len(), maps.slots.max_entries),
        fill(maps.vips.name, maps.vips.entries()?.len(), maps.vips.max_entries),
        fill(maps.names.name, maps.names.entries()?.len(), maps.names.max_entries),
        fill(maps.maglev.name, maps.maglev_ids().len(), maps.maglev.max_entries),
        fill(maps.src_ranges.name, maps.src_range_entries()?.len(), maps.src_ranges.max_entries),
        fill(maps.ct.tcp.name, maps.ct.tcp.entries()?.len(), maps.ct.tcp.max_entries),
        fill(maps.ct.any.name, maps.ct.any.entries()?.len(), maps.ct.any.max_entries),
        fill(maps.affinity.name, maps.affinity.entries()?.len(), maps.affinity.max_entries),
        fill(maps.sock_revnat.name, maps.sock_revnat.entries()?.len(), maps.sock_revnat.max_entries),
        fill(maps.v6.services.name, maps.v6.services.entries()?.len(), maps.v6.services.max_entries),
        fill(maps.v6.backends.name, maps.live_backends6()?, maps.v6.backends.max_entries),
        fill(maps.v6.vips.name, maps.v6.vips.entries()?.len(), maps.v6.vips.max_entries),
        fill(maps.v6.sock_revnat.name, maps.v6.sock_revnat.entries()?.len(), maps.v6.sock_revnat.max_entries),
        fill(maps.v6.src_ranges.name, maps.v6.src_ranges.entries()?.len(), maps.v6.src_ranges.max_entries),
        fill(maps.v6.ct_tcp.name, maps.v6.ct_tcp.entries()?.len(), maps.v6.ct_tcp.max_entries),
        fill(maps.v6.ct_any.name, maps.v6.ct_any.entries()?.len(), maps.v6.ct_any.max_entries),
        // The pre-filter's lanes in use: about the square of this share of
        // addresses with no frontend take the exact lookup (false
        // positives: both their lanes in use).
        fill(maps.vip_filter.name, filter_lanes_in_use(&maps.vip_filter)?, lb_common::vip_filter::BUCKETS),
        fill(maps.v6.vip_filter.name, filter_lanes_in_use(&maps.v6.vip_filter)?, lb_common::vip_filter::BUCKETS),
    ])
}

/// Lanes of a pre-filter (`LB4_VIP_FILTER`, `LB6_VIP_FILTER`) that record
/// some frontend kind.
fn filter_lanes_in_use(filter: &Named<Array<MapData, u64>>) -> Result<usize, MapsError> {
    use lb_common::vip_filter::{LANE_BITS, LANES};
    let lane_mask = (1u64 << LANE_BITS) - 1;
    Ok(filter.slots()?.iter().map(|(_, w)| (0..LANES).filter(|i| (w >> (i * LANE_BITS)) & lane_mask != 0).count()).sum())
}

pub fn read(maps: &Maps) -> Result<Stats, MapsError> {
    Ok(Stats { reasons: reasons(maps)?, services: services(&list::listed(maps)?), maps: fills(maps)? })
}

pub fn render(s: &Stats) -> String {
    let mut t = vec![vec!["REASON".to_string(), "PACKETS".into(), "MEANING".into()]];
    for r in &s.reasons {
        t.push(vec![r.reason.to_string(), r.packets.to_string(), r.help.to_string()]);
    }
    let mut out = super::table(&t);
    out.push('\n');
    let mut t = vec![["SERVICE", "FRONTENDS", "PACKETS", "BYTES", "NEW FLOWS"].map(String::from).to_vec()];
    for c in &s.services {
        t.push(vec![c.service.clone(), c.frontends.to_string(), c.packets.to_string(), c.bytes.to_string(), c.new_flows.to_string()]);
    }
    out.push_str(&super::table(&t));
    out.push('\n');
    let mut t = vec![["MAP", "ENTRIES", "MAX", "FILL"].map(String::from).to_vec()];
    for f in &s.maps {
        t.push(vec![f.map.to_string(), f.entries.to_string(), f.max_entries.to_string(), format!("{:.1}%", f.percent)]);
    }
    out.push_str(&super::table(&t));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_levels_round_to_a_tenth_of_a_percent() {
        assert_eq!(fill("M", 1, 3).percent, 33.3);
        assert_eq!(fill("M", 0, 0).percent, 0.0);
        assert_eq!(fill("M", 64, 64).percent, 100.0);
    }
}
