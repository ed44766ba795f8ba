//! What the datapath counted and how full its maps are, read from the
//! pinned maps at each scrape and encoded by prometheus-client (a
//! [`Collector`] over one snapshot): the same figures as `lb-agent stats`,
//! plus the build's version.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, prometheus_text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::Registry,
};

use crate::{
    inspect::stats::{self, Fill, Reason},
    list::{self, Listed},
    maps::{Maps, MapsError},
};

/// The figures of one scrape.
#[derive(Debug)]
struct Snapshot {
    reasons: Vec<Reason>,
    listed: Vec<Listed>,
    fills: Vec<Fill>,
}

/// The per-frontend counters: name, help, value.
type FrontendCounter = (&'static str, &'static str, fn(&Listed) -> u64);

const FRONTEND_COUNTERS: [FrontendCounter; 3] = [
    ("lb_frontend_packets", "Packets to a frontend that the datapath translated", |l| l.packets),
    ("lb_frontend_bytes", "Bytes of those packets", |l| l.bytes),
    ("lb_frontend_new_flows", "New flows (and translated sockets) to a frontend", |l| l.new_flows),
];

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "lb_datapath_packets",
            "Packets the datapath dropped, rejected or handled specially, by reason (lb-agent stats; drop=\"true\" for drops and rejects)",
            None,
            MetricType::Counter,
        )?;
        for r in &self.reasons {
            let labels = [("reason", r.reason), ("drop", if r.drop { "true" } else { "false" })];
            ConstCounter::new(r.packets).encode(family.encode_family(&labels)?)?;
        }
        for (name, help, get) in FRONTEND_COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for l in &self.listed {
                let labels = [("service", l.row.service.as_str()), ("frontend", l.row.frontend.as_str()), ("scope", l.row.scope)];
                ConstCounter::new(get(l)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor("lb_map_entries", "Entries in a datapath map", None, MetricType::Gauge)?;
        for f in &self.fills {
            ConstGauge::new(i64::try_from(f.entries).unwrap_or(i64::MAX)).encode(family.encode_family(&[("map", f.map)])?)?;
        }
        let mut family = encoder.encode_descriptor("lb_map_max_entries", "Capacity of a datapath map", None, MetricType::Gauge)?;
        for f in &self.fills {
            ConstGauge::new(i64::from(f.max_entries)).encode(family.encode_family(&[("map", f.map)])?)?;
        }
        Ok(())
    }
}

/// The datapath's metrics, read from `maps` now, in the Prometheus text
/// format.
pub fn render(maps: &Maps) -> Result<String, MapsError> {
    let snapshot = Snapshot { reasons: stats::reasons(maps)?, listed: list::listed(maps)?, fills: stats::fills(maps)? };
    let mut registry = Registry::default();
    registry.register("lb_build", "The agent's version (always 1)", Info::new([("version", env!("CARGO_PKG_VERSION"))]));
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &registry);
    Ok(out)
}
